"""Constants shared by every part of mmit."""

#: Label value ignored by ``torch.nn.CrossEntropyLoss`` (LLaVA's ``IGNORE_INDEX``).
IGNORE_INDEX = -100

#: Placeholder for one image in turn text, as LLaVA writes it. Each one is expanded into
#: ``num_image_tokens`` copies of the tokenizer's ``<image>`` token before splicing.
IMAGE_PLACEHOLDER = "<image>"

#: Media kinds a Sample may carry (docs/architecture.md, "Data").
MEDIA_KINDS = ("image", "video", "audio", "pointcloud")

#: The one table of placeholders: the text that stands for one media item of each kind in a turn.
#: ``Sample.validate`` checks, kind by kind, that the number of placeholders equals the number of
#: media items; a family that feeds a kind to its LLM makes that placeholder one special token.
MEDIA_PLACEHOLDERS = {
    "image": IMAGE_PLACEHOLDER,
    "video": "<video>",
    "audio": "<audio>",
    "pointcloud": "<pointcloud>",
}

#: Roles of a normalised turn.
ROLES = ("system", "user", "assistant")
