"""The error tree of tasks-server. Domain errors know nothing of HTTP.

TasksServerError
├── ConfigError (ValueError)            a bad setting, named by key
├── ValidationFailed (ValueError)        request data that breaks a rule; carries a tree
├── AuthError
│   ├── Unauthenticated                 malformed credentials or unknown owner (403)
│   ├── WrongKey                        a well-formed key that is not the owner's (401)
│   └── RegistrationClosed              OWNER_REGISTRATION=closed (403)
├── NotFound (LookupError)              missing, or another owner's (indistinguishable)
│   ├── OwnerNotFound
│   ├── TaskNotFound
│   └── WorkflowNotFound
├── Conflict                            e.g. an owner name already taken
├── PreconditionFailed                  wrong state, queue limit reached (422)
│   ├── WrongState                      a transition the task's state forbids
│   ├── QueueLimitReached
│   └── Unsupported                     an option this build of libcurl cannot do
├── PayloadTooLarge                     request body over the limit (413)
├── ClientGone                          the client hung up before its body was read
├── Throttled                           too many requests in the window (429)
├── StorageUnavailable                  the database refuses writes for now: disk full,
│                                       locked too long, I/O error (503, Retry-After)
└── BackupError                         a backup or restore that could not be done
"""

from __future__ import annotations

from typing import Any


class TasksServerError(Exception):
    """Base of every error the server raises on purpose."""

    default_message = "Internal server error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class ConfigError(TasksServerError, ValueError):
    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        super().__init__(f"{key}={value!r}: {reason}")


class ValidationFailed(TasksServerError, ValueError):
    """Bad input; ``tree`` mirrors the input with an ``_errors`` list at every level."""

    default_message = "A request includes an invalid credential or value"

    def __init__(self, tree: dict[str, Any] | None = None, message: str | None = None) -> None:
        self.tree = tree
        super().__init__(message)


class AuthError(TasksServerError):
    pass


class Unauthenticated(AuthError):
    default_message = "The server did not accept valid authentication"


class WrongKey(AuthError):
    default_message = "The request did not include valid authentication"


class RegistrationClosed(AuthError):
    default_message = "Owner registration is closed on this server; ask its administrator"


class NotFound(TasksServerError, LookupError):
    default_message = "The requested resource was not found"


class OwnerNotFound(NotFound):
    pass


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__()


class WorkflowNotFound(NotFound):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__()


class Conflict(TasksServerError):
    default_message = "The request cannot be completed due to a conflict"


class PreconditionFailed(TasksServerError):
    """An action the target's state does not allow; the message says which rule."""

    default_message = "The request did not meet one of its preconditions"


class WrongState(PreconditionFailed):
    """A task transition its current state does not allow."""

    def __init__(self, task_id: str, state: str, rule: str) -> None:
        self.task_id = task_id
        self.state = state
        super().__init__(f"Task {task_id} is {state}; {rule}")


class QueueLimitReached(PreconditionFailed):
    def __init__(self, limit: int | None = None) -> None:
        detail = "" if limit is None else f" of {limit} (the owner's tasksInQueueLimit)"
        super().__init__(f"Tasks in queue has reached its limit{detail}")


class Unsupported(PreconditionFailed):
    pass


class PayloadTooLarge(TasksServerError):
    default_message = "The request is too large"


class ClientGone(TasksServerError):
    """The client closed the connection mid-request; nobody reads the answer."""

    default_message = "The client closed the connection"


class Throttled(TasksServerError):
    default_message = "Too many requests in a given amount of time"

    def __init__(self, reset_s: int) -> None:
        self.reset_s = reset_s
        super().__init__()


class StorageUnavailable(TasksServerError):
    """The database cannot take writes right now (disk full, locked longer than the busy
    timeout, an I/O error). Nothing was written; the same write may succeed later."""

    default_message = "The database is not accepting writes at the moment"

    def __init__(self, reason: str, retry_after_s: int = 5) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(f"The database is not accepting writes at the moment: {reason}")


class BackupError(TasksServerError):
    """A backup or restore that could not be done; the message says why and what to do."""
