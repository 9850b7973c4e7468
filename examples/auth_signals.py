"""The demo's signals, defined the way a Flask or blinker app defines its own.

With blinker this module would read ``from blinker import Namespace``; with
signalbus it is the same code with another import, and every process that imports
it (and calls ``signalbus.configure()``) shares these signals through Redis.
"""

from signalbus import Namespace

auth = Namespace("auth")

user_logged_in = auth.signal(
    "logged-in",
    doc="A user logged in. Keyword arguments: user_id (int), ip (str), at (datetime).",
)
