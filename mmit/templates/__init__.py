"""Conversation templates (``plain``, ``vicuna-v1``, ``llama-2``, ``chatml``) and per-turn labels."""

from mmit.templates.chat_templates import (TEMPLATES, ConversationTemplate, apply_template, get_template,
                                           stop_token_ids)

__all__ = ["TEMPLATES", "ConversationTemplate", "apply_template", "get_template", "stop_token_ids"]
