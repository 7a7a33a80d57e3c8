"""Export to and import from other toolkits' model folders (``mmit export`` / ``mmit import``)."""
