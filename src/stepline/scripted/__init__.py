"""A scripted OpenAI-compatible Chat Completions model, served for real.

stepline's tests, its demo mode and its benchmarks use it as the upstream
model, and so can anyone testing an agent. A :class:`Script` says what the
model answers turn by turn (text, reasoning, function and custom tool calls,
usage, pacing and faults; logprobs on request); :class:`ScriptedModel` holds
scripts by model name and logs what it received; :func:`create_scripted_app`
serves it as an ASGI app and :func:`serve_app` puts any ASGI app on a real
socket::

    model = ScriptedModel({"weather": Script.from_json(text)})
    async with serve_app(create_scripted_app(model)) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x")
        ...
    assert model.requests("weather")[-1]["messages"][-1]["role"] == "tool"

A model name without a script gets :func:`demo_reply`.
"""

from stepline.scripted._demo import demo_reply
from stepline.scripted._script import (
    Fault,
    Script,
    ScriptedCustomToolCall,
    ScriptedToolCall,
    ScriptedUsage,
    Turn,
)
from stepline.scripted._server import ScriptedModel, create_scripted_app
from stepline.scripted._serving import serve_app

__all__ = [
    "Fault",
    "Script",
    "ScriptedCustomToolCall",
    "ScriptedModel",
    "ScriptedToolCall",
    "ScriptedUsage",
    "Turn",
    "create_scripted_app",
    "demo_reply",
    "serve_app",
]
