"""Errors that stop the agent at start-up with exit status 2 and a one-line explanation naming the fix."""


class StartupError(RuntimeError):
    """A problem the user must fix (config key, interface, kernel feature, capability); the message says how."""
