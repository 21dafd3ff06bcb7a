"""The one kind of error a user can fix: the command line prints its message alone, without a
traceback, and exits 2. Each subclass names the input (file and line, folder, option) and
what to do."""


class UserInputError(Exception):
    """Bad or missing input: data files, checkpoints, results, an option set."""
