"""Everything that runs as a process: the CLI, settings and (later) tasks, ingestion and the API.

Nothing imports ``workers``.
"""
