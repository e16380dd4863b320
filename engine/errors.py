"""The errors the engine raises. Each carries one line a user can act on."""


class BlockfoldError(Exception):
    """Base of every error meant for a user: the message is shown as is, without a traceback."""


class NotAPoolError(BlockfoldError):
    pass


class PoolFormatError(BlockfoldError):
    pass


class PoolLockedError(BlockfoldError):
    pass


class VMNotFoundError(BlockfoldError):
    pass


class VMExistsError(BlockfoldError):
    pass


class BadNameError(BlockfoldError):
    pass


class OutOfRangeError(BlockfoldError):
    pass


class BadImageError(BlockfoldError):
    pass


class NoSpaceError(BlockfoldError):
    pass


class ReadOnlyError(BlockfoldError):
    pass


class CancelledError(BlockfoldError):
    pass
