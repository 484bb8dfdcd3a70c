"""OpenAI-client calls to a running Uni-MoE vLLM server (`python -m serving.serve`); needs the `openai` package (the
vLLM venv has it).

    build/venvs/vllm/bin/python -m serving.client --url http://127.0.0.1:8000/v1 --image cat.png "What is this?"

Prints one JSON object: {"status": 200, "text": ..., "token_ids": [...]} or, for a refused request,
{"status": 400, "message": ...}. Media go as data URLs (image_url / input_audio / video_url content parts).
"""

import argparse
import base64
import json
import mimetypes
import sys
from pathlib import Path


def data_url(path: str | Path) -> str:
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def content_parts(prompt: str, images=(), audios=(), videos=()) -> list[dict]:
    """An OpenAI user message's content: the media (as data URLs), then the text."""
    parts = [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in images]
    for path in audios:
        audio_format = Path(path).suffix.lstrip(".") or "wav"
        encoded = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append({"type": "input_audio", "input_audio": {"data": encoded, "format": audio_format}})
    parts += [{"type": "video_url", "video_url": {"url": data_url(p)}} for p in videos]
    return parts + [{"type": "text", "text": prompt}]


def chat(client, model: str, content, max_tokens: int = 16) -> dict:
    """One greedy chat completion; returns the status and the answer (text and token ids) or the error message."""
    import openai

    try:
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            temperature=0.0,
            extra_body={"return_token_ids": True},
        )
    except openai.APIStatusError as error:
        return {"status": error.status_code, "message": str(error)}
    choice = response.choices[0]
    return {"status": 200, "text": choice.message.content, "token_ids": getattr(choice, "token_ids", None)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--image", action="append", default=[])
    parser.add_argument("--audio", action="append", default=[])
    parser.add_argument("--video", action="append", default=[])
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    import openai

    client = openai.OpenAI(base_url=args.url, api_key="unused", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    result = chat(client, model, content_parts(args.prompt, args.image, args.audio, args.video), args.max_tokens)
    print(json.dumps(result))
    return 0 if result["status"] == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
