"""Tasks shipped with coar. ``coar.tasks.digits`` is the default: it needs no download."""

DEFAULT_TASK = "coar.tasks.digits:task"
