"""Using a checkpoint interactively: ``mmit chat`` (terminal), ``mmit serve`` (a gradio web demo and an
OpenAI-compatible ``/v1/chat/completions`` on one port).

* :mod:`mmit.serve.sampling`: the decoding flags shared with ``mmit generate``;
* :mod:`mmit.serve.session`: a conversation (turns + images) over the inference contract;
* :mod:`mmit.serve.chat`: the terminal chat;
* :mod:`mmit.serve.openai_api`: the OpenAI-compatible routes (FastAPI);
* :mod:`mmit.serve.webui`: the gradio demo;
* :mod:`mmit.serve.app`: one FastAPI app with both, run by uvicorn.

Only :mod:`sampling`, :mod:`session` and :mod:`chat` import without the ``[serve]`` extra
(fastapi, uvicorn, gradio).
"""
