# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""The demo's page: a multimodal chat (the API endpoint /chat) with sampling controls, the history switch, the
context line and the experts panel (`build_demo`)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from backends import GenerationError, RequestRefusedError, TransformersBackend, VLLMBackend
from chat import (
    ERROR_MARK,
    NOTE_MARK,
    ContextOverflowError,
    assistant_message,
    control_strings,
    fit_to_context,
    message_parts,
    parse_history,
    user_message,
)
from media import (
    AUDIO_CHOICES,
    DemoInputError,
    explain_file_error,
    file_path,
    plain_text,
    processing_errors,
    processor_error_class,
)

from modeling_unimoe.training.routing import plot_routing, system_prefix_length


SKIP = object()  # "unchanged" for an output of the demo's response generator
API_DESCRIPTION = (
    "Answers a message ({'text': ..., 'files': [handle_file(path), ...]}). use_history=True (the default) answers in "
    "the context of this session's earlier turns (one gradio_client.Client is one session), the oldest left out "
    "first when the model's context is full; use_history=False answers the message alone. Returns the answer, the "
    "experts plot and a line saying which earlier turns the answer saw."
)


def build_demo(model, processor, title: str = "Uni-MoE", keep_files: int = 3600, backend: VLLMBackend | None = None):
    """The Gradio Blocks: a multimodal chat (endpoint /chat) with sampling controls, the history switch, the
    context line and the experts panel. Files the app makes or receives are deleted `keep_files` seconds later (and
    all when the server stops). With a `backend` (a vLLM server) the answers come from it and `model` is unused."""
    import gradio as gr

    vllm = backend is not None
    if not vllm:
        backend = TransformersBackend(model, processor)
    errors = processing_errors(processor)
    too_long = tuple(c for c in (processor_error_class(processor, "PromptTooLongError"),) if c is not None)
    controls = control_strings(processor)
    prefix_length = system_prefix_length(processor)
    if vllm:
        context = backend.max_model_len or int(processor.tokenizer.model_max_length)
        has_moe = False  # the routing is in the server
    else:
        context = int(model.config.get_text_config().max_position_embeddings)
        has_moe = bool(model.config.get_text_config().moe_layer_indices)
    # vLLM's chat API has one audio kind: with that backend audio always takes the `<audio>` path
    both_audio_paths = not vllm and len(processor.audio_paths) == 2

    def encode(messages):
        return processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"short_video": "repeat"},
        )

    def experts_plot(inputs) -> str | None:
        """The experts PNG of a prompt, as a file in gradio's cache that the experts component owns (so gradio's
        `delete_cache` deletes it); the file drawn first is deleted at once."""
        if not has_moe:
            return None
        report = backend.routing(inputs, prefix_length)
        handle, drawn = tempfile.mkstemp(suffix=".png", prefix="experts-")
        os.close(handle)
        try:
            plot_routing(report).save(drawn, format="png")
            return experts.move_resource_to_block_cache(drawn)
        finally:
            os.remove(drawn)

    def explain(error, current) -> str:
        """A user-terms message for a refused message: the uploaded file at fault (the only one, or the first of
        several that fails alone: only then are files encoded again), else the error without paths or code advice."""
        if isinstance(error, ContextOverflowError) or (too_long and isinstance(error, too_long)):
            return (
                "This message is too long for the model: with its files it takes more than the model's context of "
                f"{context} tokens. Send fewer or shorter files, or a shorter question."
            )
        if isinstance(error, DemoInputError):
            return str(error)
        files = [block for block in current["content"] if block["type"] != "text"]
        if len(files) == 1:
            return explain_file_error(error, Path(files[0]["path"]).name, files[0]["type"], processor, context)
        for block in files:
            try:
                encode([{"role": "user", "content": [block, {"type": "text", "text": "?"}]}])
            except errors as file_error:
                return explain_file_error(file_error, Path(block["path"]).name, block["type"], processor, context)
        return plain_text(str(error))

    def respond(message, history, temperature, max_new_tokens, audio_is, use_history):
        """Yields (answer so far, experts plot or SKIP, context line or SKIP); the last item has all three."""
        max_new_tokens = int(max_new_tokens)
        if vllm:
            audio_is = "speech"
        current = None
        try:
            text, files = message_parts(message)
            current = user_message([text], files, processor, audio_is, controls)
            exchanges = parse_history(history) if use_history else []
            kept = [e for e in exchanges if all(os.path.isfile(path) for path in e.files)]
            expired = len(exchanges) - len(kept)
            pairs = [
                [user_message(e.texts, e.files, processor, audio_is, controls), assistant_message(e.answer, controls)]
                for e in kept
            ]
            fitted = fit_to_context(encode, pairs, current, context, max_new_tokens, too_long)
        except errors as error:
            print(f"Uni-MoE demo: request refused: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            answer = explain(error, current) if current is not None else str(error)
            yield f"{ERROR_MARK} {answer}", None, "This message was not answered."
            return
        inputs = fitted.inputs
        files_dropped = sum(len(e.files) for e in kept[: fitted.dropped])
        prefix = left_out_notes(fitted.dropped, files_dropped, expired, context)
        summary = context_summary(use_history, len(exchanges), fitted.dropped, expired)
        summary += f" Prompt: {inputs['input_ids'].shape[-1]} of {context} tokens."
        if fitted.max_new_tokens < max_new_tokens:
            summary += f" The answer was limited to {fitted.max_new_tokens} new tokens by the context."

        messages = [message for pair in pairs[fitted.dropped :] for message in pair] + [current]
        answer = ""
        try:
            for piece in backend.stream(messages, inputs, fitted.max_new_tokens, float(temperature)):
                answer += piece
                if answer.strip():
                    yield prefix + answer.strip(), SKIP, SKIP
        except RequestRefusedError as error:  # a vLLM server's refusal, with the processor's message for media
            print(f"Uni-MoE demo: request refused by vLLM: {error}", file=sys.stderr, flush=True)
            yield f"{ERROR_MARK} {plain_text(error.message)}", None, "This message was not answered."
            return
        except GenerationError as error:
            raise gr.Error(str(error)) from None
        yield prefix + (answer.strip() or "(the model gave an empty answer)"), experts_plot(inputs), summary

    def chat(message, history, temperature, max_new_tokens, audio_is, use_history=True):
        """The chat UI's function (gr.ChatInterface keeps the history)."""
        for answer, plot, line in respond(message, history, temperature, max_new_tokens, audio_is, use_history):
            yield answer, gr.skip() if plot is SKIP else plot, gr.skip() if line is SKIP else line

    def api_chat(message, temperature, max_new_tokens, audio_is, use_history, history):
        """The /chat API: as the chat UI, with this session's history in a gr.State."""
        history = list(history or [])
        answer, plot, line = "", None, ""
        for answer, new_plot, new_line in respond(
            message, history, temperature, max_new_tokens, audio_is, use_history
        ):
            plot = plot if new_plot is SKIP else new_plot
            line = line if new_line is SKIP else new_line
            yield answer, gr.skip(), gr.skip(), gr.skip()
        text, files = (message or {}).get("text") or "", (message or {}).get("files") or []
        history.append({"role": "user", "content": [*({"path": file_path(f)} for f in files), text]})
        history.append({"role": "assistant", "content": answer})
        yield answer, history, plot, line

    textbox = gr.MultimodalTextbox(
        file_types=["image", "video", "audio"],
        file_count="multiple",
        sources=["upload", "microphone"],
        placeholder="Ask about an image, a video, speech or a sound (attach or record it)...",
    )
    keep = max(1, int(keep_files))
    with gr.Blocks(
        title=title, analytics_enabled=False, fill_height=True, delete_cache=(min(keep, 300), keep)
    ) as demo:
        gr.Markdown(
            f"# {title}\nA mixture-of-experts LLM that reads images, videos, speech and sounds. Attach media (or "
            "record with the microphone) and ask a question; the experts panel shows where the prompt's tokens went. "
            "With **Use the conversation so far** on, each answer sees this chat's earlier questions, answers and "
            f"files (the oldest left out first when the model's context of {context} tokens is full); off, each "
            "message is answered alone."
        )
        experts = gr.Image(
            label="Experts: share of each modality's tokens routed to each expert (last answer)",
            type="filepath",
            interactive=False,
            render=False,
        )
        context_line = gr.Textbox(label="Context of the last answer", interactive=False, lines=2, render=False)
        use_history = gr.Checkbox(
            value=True,
            label="Use the conversation so far",
            info="On: answers see the earlier turns of this chat. Off: each message is answered alone.",
            render=False,
        )
        settings = [
            gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)", render=False),
            gr.Slider(1, 256, value=32, step=1, label="Max new tokens", render=False),
            gr.Radio(
                list(AUDIO_CHOICES),
                value="auto",
                label="Audio is",
                info="auto: speech when the question asks what is said, else sound",
                visible=both_audio_paths,
                render=False,
            ),
        ]
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                use_history.render()
                gr.ChatInterface(
                    chat,
                    multimodal=True,
                    textbox=textbox,
                    additional_inputs=[*settings, use_history],
                    additional_inputs_accordion=gr.Accordion("Generation settings", open=False, render=False),
                    additional_outputs=[experts, context_line],
                    api_name="chat_ui",
                    api_visibility="private",  # the API is /chat below
                    fill_height=True,
                )
            with gr.Column(scale=2):
                context_line.render()
                experts.render()
                if vllm:
                    gr.Markdown(
                        f"Answers come from the vLLM server at {backend.url}: the experts panel needs the "
                        "transformers backend."
                    )
                elif not has_moe:
                    gr.Markdown("This model has no MoE layers: there is no routing to show.")
        # /chat: its own endpoint (the ChatInterface's passes file outputs on as server paths), with the session's
        # history in a State
        api_history = gr.State([])
        api_answer = gr.Textbox(visible=False, label="answer")
        gr.Button(visible=False).click(
            api_chat,
            [textbox, *settings, use_history, api_history],
            [api_answer, api_history, experts, context_line],
            api_name="chat",
            api_description=API_DESCRIPTION,
        )
    return demo


def left_out_notes(dropped: int, files_dropped: int, expired: int, context: int) -> str:
    """The paragraphs (each marked NOTE_MARK) that start an answer whose earlier exchanges were left out: the oldest
    ones, to fit the context, and those whose files expired. Empty when none was."""
    notes = []
    if dropped:
        notes.append(
            f"{NOTE_MARK} The {_count(dropped, 'oldest exchange')}"
            + (f" (with {_count(files_dropped, 'file')})" if files_dropped else "")
            + f" {'was' if dropped == 1 else 'were'} left out to fit the model's context of {context} tokens."
        )
    if expired:
        notes.append(
            f"{NOTE_MARK} {_count(expired, 'earlier exchange')} {'was' if expired == 1 else 'were'} left out: its "
            "files are no longer on the server."
        )
    return "".join(note + "\n\n" for note in notes)


def context_summary(use_history: bool, earlier: int, dropped: int, expired: int) -> str:
    """The first sentence of the context line: whether history was used, and how much of it."""
    if not use_history:
        return "History off: this answer saw only this message."
    if not earlier:
        return "History on: no earlier exchange yet; this answer saw only this message."
    summary = f"History on: this answer saw {_count(earlier - dropped - expired, 'earlier exchange')} of {earlier}"
    left_out = [f"{dropped} to fit the context"] * bool(dropped) + [f"{expired} whose files expired"] * bool(expired)
    return summary + (f" ({', '.join(left_out)} left out)." if left_out else ".")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
