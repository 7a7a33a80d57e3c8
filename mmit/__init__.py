"""mmit: multimodal instruction tuning from one config.

Data flow: source files -> ``Sample`` records (``mmit.data``) -> webdataset shards -> conversation
template + labels (``mmit.templates``) -> ``MultimodalLM`` (``mmit.models``) -> trainer
(``mmit.training``) -> export (``mmit.export``).
"""

__version__ = "0.1.0"
