"""The original JobMaster README's examples, as task modules (``nice_tasks``, ``my_tasks``)."""
