"""Conversation templates (``plain``, ``vicuna-v1``, ``llama-2``, ``chatml``) and per-turn labels."""

from mmit.templates.chat_templates import (TEMPLATES, ConversationTemplate, apply_template, get_template,
                                           stop_token_ids)

#: The conversation template a config gets when it names none (LLaVA-1.5's).
DEFAULT_TEMPLATE = "vicuna-v1"

__all__ = ["DEFAULT_TEMPLATE", "TEMPLATES", "ConversationTemplate", "apply_template", "get_template", "stop_token_ids"]
