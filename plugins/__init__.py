"""headsurgeon's built-in plugins, registered through the ``headsurgeon`` entry points."""
