"""Renders the model with the Jinja2 templates in generator/templates."""
from __future__ import annotations

import os
from typing import List, Tuple

import jinja2

from .model import File, Request

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def render_file(env: jinja2.Environment, file: File) -> List[Tuple[str, str]]:
    """@return (output name, content) of each file generated for one .proto."""
    out = [
        (file.header, env.get_template("header.h.j2").render(file=file)),
        (file.source, env.get_template("source.cc.j2").render(file=file)),
    ]
    if file.mocks:
        out.append((file.mock_header, env.get_template("mock.h.j2").render(file=file)))
    return out


def render(request: Request) -> List[Tuple[str, str]]:
    env = environment()
    outputs: List[Tuple[str, str]] = []
    for file in request.files:
        outputs.extend(render_file(env, file))
    return outputs
