"""The TT device scheduler: device groups, one worker process per group, queues, readiness."""
