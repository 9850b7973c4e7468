"""One process of a README example: ``python -m tests.readme_process FILE`` runs the code
in FILE as ``__main__``, prints READY, and exits once stdin closes (closing its bus at
exit, as any program does). tests/test_readme.py starts several, as a service's replicas."""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    # The example's own prints, each as it happens: the test waits for them.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # Kept until exit: blinker holds the example's receivers weakly, as a module's
    # globals would keep them alive in a real program.
    example = runpy.run_path(sys.argv[1], run_name="__main__")
    print("READY")
    for line in sys.stdin:
        del line
    del example


if __name__ == "__main__":
    main()
