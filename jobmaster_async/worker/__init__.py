"""Running jobs: executors, outcome recording, the dispatcher and its background services."""
