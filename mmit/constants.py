"""Constants shared by every part of mmit."""

#: Label value ignored by ``torch.nn.CrossEntropyLoss`` (LLaVA's ``IGNORE_INDEX``).
IGNORE_INDEX = -100

#: Placeholder for one image in turn text, as LLaVA writes it. Each one is expanded into
#: ``num_image_tokens`` copies of the tokenizer's ``<image>`` token before splicing.
IMAGE_PLACEHOLDER = "<image>"

#: Media kinds a Sample may carry (see DESIGN.md §1).
MEDIA_KINDS = ("image", "video", "audio", "pointcloud")

#: Roles of a normalised turn.
ROLES = ("system", "user", "assistant")
