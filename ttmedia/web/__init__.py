"""The HTTP layer: app wiring, middleware, validation, security, problems, request context and
responses. It may import the scheduler, jobs, runners and media; nothing below it imports it."""
