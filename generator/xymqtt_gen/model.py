"""Parses a CodeGeneratorRequest into a plain model for the templates.

Everything the templates print is computed here (C++ names, expressions, documentation lines); the
templates only loop and test conditions. Schema errors are collected as `file.proto:LINE:COL: message`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

OPTIONS_FILE = "xymqtt/options.proto"

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_CPP_KEYWORDS = set("""
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t char32_t
class compl concept const consteval constexpr constinit const_cast continue co_await co_return co_yield
decltype default delete do double dynamic_cast else enum explicit export extern false float for friend
goto if inline int long mutable namespace new noexcept not not_eq nullptr operator or or_eq private
protected public register reinterpret_cast requires return short signed sizeof static static_assert
static_cast struct switch template this thread_local throw true try typedef typeid typename union
unsigned using virtual void volatile wchar_t while xor xor_eq
""".split())
# Names the generated classes use for their own members and parameters. Not in schema_rules.json: they
# are the templates' own, and the command-line tool, which has no generated code, need not know them.
_RESERVED_TOKENS = {"format", "options", "transport", "service", "event", "request", "handler"}
# The keys the JSON wire's envelope shares with the payload's object (the JavaScript library's protocol):
# an invoke and a result carry `messageId`, a reject also `ok`, `status` and `message`.
_ENVELOPE_KEYS = {"messageId"}
_REJECT_ENVELOPE_KEYS = {"messageId", "ok", "status", "message"}
_MAX_CONCURRENCY = 256  # xymqtt::max_concurrency (transport.h)

_STRING_TYPES = {descriptor_pb2.FieldDescriptorProto.TYPE_STRING}
_INTEGER_TYPES = {
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32, descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32, descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32, descriptor_pb2.FieldDescriptorProto.TYPE_SINT64,
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32, descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64,
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32, descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64,
}

# Field numbers in descriptor.proto, for source locations.
_FILE_SERVICE = 6
_SERVICE_METHOD = 2
_SERVICE_OPTIONS = 3
_METHOD_OPTIONS = 4


class SchemaError(Exception):
    """One or more schema errors, each `file.proto:LINE:COL: message`."""

    def __init__(self, errors: List[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class ParameterError(Exception):
    """An invalid plugin parameter."""


@dataclass
class Parameters:
    mocks: bool = False


def parse_parameters(text: str) -> Parameters:
    """Parses `--xymqtt_opt` (comma-separated key=value). Unknown keys and bad values are errors."""
    params = Parameters()
    seen = set()
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ParameterError(f"parameter '{item}' is not of the form key=value (known: mocks)")
        if key in seen:
            raise ParameterError(f"parameter '{key}' given twice")
        seen.add(key)
        if key == "mocks":
            if value not in ("true", "false"):
                raise ParameterError(f"parameter mocks must be true or false, not '{value}'")
            params.mocks = value == "true"
        else:
            raise ParameterError(f"unknown parameter '{key}' (known: mocks)")
    return params


def cpp_string(text: str) -> str:
    """A C++ string literal for `text`."""
    out = []
    for ch in text:
        if ch in "\\\"":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20:
            out.append("\\%03o" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def cpp_identifier(name: str) -> str:
    """`name` as a C++ identifier: a keyword gets a trailing underscore, as protoc does for fields."""
    return name + "_" if name in _CPP_KEYWORDS else name


def camel(snake: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in snake.split("_") if p)


class SchemaRules:
    """The schema rules of schema_rules.json: snake case, token names, the topic checks that need no schema.

    The command-line tool builds the same file in and applies it the same way (tools/src/schema_rules.cpp),
    so both name commands and refuse topic patterns alike; the file says how its entries are read.
    """

    PATH = os.path.join(os.path.dirname(os.path.realpath(__file__)), "schema_rules.json")
    _KEYS = {"about", "snake_case", "token_name", "topic_pattern_checks", "topic_level_checks"}

    def __init__(self, table: dict):
        self.table = table
        # A key one side would not know is an error on both, so that neither ignores a rule.
        unknown = set(table) - self._KEYS
        if unknown:
            raise ValueError(f"schema rules: unknown keys {sorted(unknown)}")
        snake_case = table["snake_case"]
        if set(snake_case) - {"substitutions", "lower_case"}:
            raise ValueError(f"schema rules: unknown keys in snake_case: {sorted(snake_case)}")
        self.substitutions = []
        for sub in snake_case["substitutions"]:
            if set(sub) != {"search", "replacement"}:
                raise ValueError(f"schema rules: a substitution has keys {sorted(sub)}, not search and replacement")
            self.substitutions.append((re.compile(sub["search"]), self._replacement(sub["replacement"])))
        self.lower_case = self._flag(snake_case["lower_case"], "lower_case")
        self.token_name = re.compile(table["token_name"])
        self.token = re.compile(r"\{(" + table["token_name"] + r")\}")
        self.pattern_checks = [self._check(c, level=False) for c in table["topic_pattern_checks"]]
        self.level_checks = [self._check(c, level=True) for c in table["topic_level_checks"]]

    @classmethod
    def load(cls, path: str = PATH) -> "SchemaRules":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    @staticmethod
    def _replacement(template: str):
        # $1..$9 as ECMAScript writes them, and nothing else of its format ($&, $$, two digits), which
        # the tool would read differently.
        if not re.fullmatch(r"(?:[^$]|\$[1-9](?![0-9]))*", template):
            raise ValueError(f"schema rules: replacement '{template}' uses '$' other than $1 to $9")
        parts = re.split(r"\$([1-9])", template)
        return lambda m: "".join(p if i % 2 == 0 else m.group(int(p)) or "" for i, p in enumerate(parts))

    @staticmethod
    def _flag(value, name: str) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"schema rules: {name} is not true or false")
        return value

    @staticmethod
    def _check(check: dict, level: bool):
        keys = set(check) - {"unless_token"} if level else set(check)
        if keys not in ({"search", "refusal"}, {"match", "refusal"}):
            raise ValueError(f"schema rules: a topic check has keys {sorted(check)}")
        whole = "match" in check
        unless_token = SchemaRules._flag(check.get("unless_token", False), "unless_token")
        return re.compile(check["match" if whole else "search"]), whole, unless_token, check["refusal"]

    @staticmethod
    def _refusal(template: str, values: Dict[str, str]) -> str:
        # One pass, so that a pattern holding `<level>` is printed as it is.
        return re.sub(r"<(pattern|level)>", lambda m: values.get(m.group(1), m.group(0)), template)

    def snake(self, name: str) -> str:
        for regex, replacement in self.substitutions:
            name = regex.sub(replacement, name)
        return name.lower() if self.lower_case else name

    def is_token_name(self, name: str) -> bool:
        return self.token_name.fullmatch(name) is not None

    def level_token(self, level: str) -> Optional[str]:
        """The name of a whole-level token `{name}`, else None."""
        m = self.token.fullmatch(level)
        return m.group(1) if m else None

    def _first_refusal(self, checks, text: str, values: Dict[str, str]) -> Optional[str]:
        for regex, whole, unless_token, refusal in checks:
            hit = regex.fullmatch(text) if whole else regex.search(text)
            if hit and not (unless_token and self.level_token(text) is not None):
                return self._refusal(refusal, values)
        return None

    def pattern_problem(self, pattern: str) -> Optional[str]:
        return self._first_refusal(self.pattern_checks, pattern, {"pattern": pattern})

    def level_problem(self, pattern: str, level: str) -> Optional[str]:
        return self._first_refusal(self.level_checks, level, {"pattern": pattern, "level": level})


RULES = SchemaRules.load()


def snake(name: str) -> str:
    return RULES.snake(name)


def doc_lines(text: str) -> List[str]:
    lines = [ln.rstrip() for ln in text.strip("\n").split("\n")] if text.strip() else []
    # Comments come with the space after `//`; drop one leading space.
    return [ln[1:] if ln.startswith(" ") else ln for ln in lines]


@dataclass
class Token:
    name: str
    required: bool
    default_literal: str  # C++ literal of the default ("" if required)
    doc: List[str]
    member: str
    param: str  # the constructor parameter and Options member: the name, escaped if it is a C++ keyword


@dataclass
class FieldToken:
    name: str
    value_expr: str  # C++ expression of the token's value, from `event`
    is_string: bool


@dataclass
class Topic:
    pattern: str
    expr: str  # service tokens filled in, field tokens as "+"
    publish_expr: str  # events: field tokens taken from `event`
    field_tokens: List[FieldToken]


@dataclass
class Event:
    name: str
    camel: str
    type_cpp: str
    type_name: str
    topic: Topic
    doc: List[str]


@dataclass
class Command:
    name: str
    method: str  # the Service's handler method: the name, escaped if it is a C++ keyword
    camel: str
    request_cpp: str
    result_cpp: str
    request_name: str
    result_name: str
    reject_cpp: Optional[str]
    reject_name: Optional[str]
    expiry_seconds: int
    group_literal: Optional[str]
    concurrency: int  # calls a server runs at once by default (the schema's, else 1)
    topic: Topic
    doc: List[str]


@dataclass
class Service:
    name: str
    snake: str
    full_name: str
    doc: List[str]
    tokens: List[Token]
    required_tokens: List[Token]
    optional_tokens: List[Token]
    events: List[Event]
    commands: List[Command]


@dataclass
class File:
    proto_name: str
    base: str
    pb_header: str
    header: str
    source: str
    mock_header: str
    namespace: List[str]
    services: List[Service]
    has_events: bool
    has_commands: bool
    mocks: bool


@dataclass
class Request:
    files: List[File]
    params: Parameters


class _Locator:
    """Source positions from source_code_info, 1-based."""

    def __init__(self, fdp: descriptor_pb2.FileDescriptorProto):
        self.name = fdp.name
        self.spans: Dict[Tuple[int, ...], Tuple[int, int]] = {}
        self.comments: Dict[Tuple[int, ...], str] = {}
        for loc in fdp.source_code_info.location:
            key = tuple(loc.path)
            if key not in self.spans:
                self.spans[key] = (loc.span[0] + 1, loc.span[1] + 1)
            if loc.leading_comments and key not in self.comments:
                self.comments[key] = loc.leading_comments

    def at(self, *paths: Tuple[int, ...], fallback: Optional[str] = None) -> str:
        for path in paths:
            if path in self.spans:
                line, col = self.spans[path]
                return f"{self.name}:{line}:{col}"
        return fallback if fallback is not None else f"{self.name}:1:1"


class _Builder:
    def __init__(self, request, params: Parameters):
        self.request = request
        self.params = params
        self.errors: List[str] = []
        self.files = {f.name: f for f in request.proto_file}
        self.pool = descriptor_pool.DescriptorPool()
        for fdp in request.proto_file:
            self.pool.Add(fdp)
        self.factory = message_factory.MessageFactory(self.pool)
        self.ext_token = self.ext_event = self.ext_command = None
        if OPTIONS_FILE in self.files:
            self.ext_token = self.pool.FindExtensionByName("xymqtt.token")
            self.ext_event = self.pool.FindExtensionByName("xymqtt.event")
            self.ext_command = self.pool.FindExtensionByName("xymqtt.command")
            # Classes of the options messages as this pool knows them, extensions included.
            self.service_options = self.factory.GetPrototype(
                self.pool.FindMessageTypeByName("google.protobuf.ServiceOptions"))
            self.method_options = self.factory.GetPrototype(
                self.pool.FindMessageTypeByName("google.protobuf.MethodOptions"))
        self.topics: Dict[str, str] = {}  # normalized topic -> "what, where"

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    # -- types -------------------------------------------------------------------------------------

    def closure(self, name: str) -> set:
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n in seen or n not in self.files:
                continue
            seen.add(n)
            todo.extend(self.files[n].dependency)
        return seen

    def resolve_message(self, type_name: str, package: str, file_name: str):
        """Resolves a type name like protoc does for a field in `package`. Returns (descriptor, error)."""
        if not type_name:
            return None, "no message type given"
        if type_name.startswith("."):
            candidates = [type_name[1:]]
        else:
            scope = package.split(".") if package else []
            candidates = [".".join(scope[:i] + [type_name]) for i in range(len(scope), -1, -1)]
        for candidate in candidates:
            try:
                desc = self.pool.FindMessageTypeByName(candidate)
            except KeyError:
                continue
            if desc.file.name not in self.closure(file_name):
                return None, (f"message type '{type_name}' ({desc.full_name}) is defined in "
                              f"{desc.file.name}, which {file_name} does not import")
            return desc, None
        return None, f"unknown message type '{type_name}'"

    @staticmethod
    def cpp_type(desc) -> str:
        package = desc.file.package
        local = desc.full_name[len(package) + 1:] if package else desc.full_name
        ns = "::" + "::".join(package.split(".")) + "::" if package else "::"
        return ns + local.replace(".", "_")

    # -- topics ------------------------------------------------------------------------------------

    def parse_topic(self, pattern: str, where: str, what: str, tokens: Dict[str, Token],
                    service_name: str, event_type=None) -> Optional[Topic]:
        # The checks that need no schema are RULES' (schema_rules.json); those that need it follow.
        problem = RULES.pattern_problem(pattern)
        if problem:
            self.error(where, f"{what}: {problem}")
            return None
        pieces: List[Tuple[str, str]] = []  # (kind, value): kind text | token | field
        field_tokens: List[FieldToken] = []
        levels = pattern.split("/")
        for i, level in enumerate(levels):
            problem = RULES.level_problem(pattern, level)
            if problem:
                self.error(where, f"{what}: {problem}")
                return None
            name = RULES.level_token(level)
            if name is not None:
                if name in tokens:
                    pieces.append(("token", tokens[name].member))
                elif event_type is not None and event_type.fields_by_name.get(name) is not None:
                    fd = event_type.fields_by_name[name]
                    if fd.label == fd.LABEL_REPEATED or (fd.type not in _STRING_TYPES and fd.type not in _INTEGER_TYPES):
                        self.error(where, f"{what}: token '{{{name}}}' is field {event_type.full_name}.{name}, "
                                          "which is not a singular string or integer field")
                        return None
                    accessor = f"event.{cpp_identifier(fd.name)}()"
                    is_string = fd.type in _STRING_TYPES
                    field_tokens.append(FieldToken(name, accessor, is_string))
                    pieces.append(("field", accessor if is_string else f"std::to_string({accessor})"))
                else:
                    known = ", ".join(sorted(tokens)) or "none"
                    where_field = (f" nor a field of {event_type.full_name}" if event_type is not None else "")
                    self.error(where, f"{what}: unknown token '{{{name}}}' in topic '{pattern}': not a token of "
                                      f"service {service_name}{where_field} (declared tokens: {known})")
                    return None
            else:
                pieces.append(("text", level))
            if i + 1 < len(levels):
                pieces.append(("text", "/"))
        return Topic(pattern, self.concat(pieces, filter_mode=True), self.concat(pieces, filter_mode=False),
                     field_tokens)

    @staticmethod
    def concat(pieces, filter_mode: bool) -> str:
        parts: List[str] = []
        text = ""
        for kind, value in pieces:
            if kind == "field" and filter_mode:
                kind, value = "text", "+"
            if kind == "text":
                text += value
                continue
            if text:
                parts.append(cpp_string(text))
                text = ""
            parts.append(value)
        if text:
            parts.append(cpp_string(text))
        if len(parts) == 1 and parts[0].startswith('"'):
            return f"std::string({parts[0]})"
        return " + ".join(parts)

    # -- the JSON wire's envelope ----------------------------------------------------------------

    def field_location(self, fd, fallback: str) -> str:
        """`file:line:col` of a field's declaration, in the file that declares its message."""
        fdp = self.files.get(fd.containing_type.file.name)
        if fdp is None:
            return fallback
        path: List[int] = [2, list(fd.containing_type.fields).index(fd)]
        desc = fd.containing_type
        while desc.containing_type is not None:
            parent = desc.containing_type
            path[:0] = [3, list(parent.nested_types).index(desc)]
            desc = parent
        path[:0] = [4, list(desc.file.message_types_by_name.values()).index(desc)]
        return _Locator(fdp).at(tuple(path), fallback=fallback)

    def envelope_clashes(self, command: str, role: str, desc, keys: set, where: str) -> int:
        """Reports the fields of `desc` whose JSON key is one of the envelope's. @return how many."""
        count = 0
        for fd in desc.fields:
            key = next((k for k in (fd.json_name, fd.name) if k in keys), None)
            if key is None:
                continue
            count += 1
            self.error(self.field_location(fd, where),
                       f"command {command}: {role} message {desc.full_name} has field '{fd.name}', whose JSON key "
                       f"'{key}' the JSON wire's envelope uses too (it carries {', '.join(sorted(keys))} in the "
                       f"same object): the value would be overwritten. Rename the field (e.g. '{fd.name}_value'; "
                       f"a json_name is not enough, JSON parsing also accepts the field's own name)")
        return count

    def register_topic(self, key: str, description: str, where: str) -> None:
        if key in self.topics:
            self.error(where, f"duplicate topic '{key}': {description} uses the topic of {self.topics[key]}")
        else:
            self.topics[key] = f"{description} ({where})"

    @staticmethod
    def topic_key(pattern: str, tokens: Dict[str, Token], defaults: Dict[str, str]) -> str:
        def sub(m):
            name = m.group(1)
            return defaults[name] if name in defaults else "{}"
        return RULES.token.sub(sub, pattern)

    # -- services ----------------------------------------------------------------------------------

    def build_service(self, fdp, si: int, loc: _Locator) -> Optional[Service]:
        sdp = fdp.service[si]
        spath = (_FILE_SERVICE, si)
        full_name = f"{fdp.package}.{sdp.name}" if fdp.package else sdp.name
        opts = self.service_options.FromString(sdp.options.SerializeToString())
        token_opts = list(opts.Extensions[self.ext_token])
        event_opts = list(opts.Extensions[self.ext_event])
        method_opts = [self.method_options.FromString(m.options.SerializeToString()) for m in sdp.method]
        has_command = [m.HasExtension(self.ext_command) for m in method_opts]
        if not token_opts and not event_opts and not any(has_command):
            return None  # not an xymqtt service
        n_errors = len(self.errors)

        tokens: Dict[str, Token] = {}
        defaults: Dict[str, str] = {}
        for i, t in enumerate(token_opts):
            where = loc.at(spath + (_SERVICE_OPTIONS, self.ext_token.number, i), spath + (_SERVICE_OPTIONS,), spath)
            if not RULES.is_token_name(t.name):
                self.error(where, f"service {sdp.name}: token name '{t.name}' must be lower_snake_case")
                continue
            if t.name in _RESERVED_TOKENS:
                self.error(where, f"service {sdp.name}: token name '{t.name}' is reserved by the generated code")
                continue
            if t.name in tokens:
                self.error(where, f"service {sdp.name}: token '{t.name}' declared twice")
                continue
            required = not t.HasField("default")
            if not required:
                if not t.default or any(c in t.default for c in "/+#\0"):
                    self.error(where, f"service {sdp.name}: default of token '{t.name}' must be non-empty and free "
                                      "of '/', '+', '#'")
                    continue
                defaults[t.name] = t.default
            # A keyword's parameter takes the trailing underscore, so its member takes another suffix: in the
            # constructor the parameter would hide a member of the same name.
            keyword = t.name in _CPP_KEYWORDS
            tokens[t.name] = Token(t.name, required, cpp_string(t.default) if not required else "",
                                   doc_lines(t.doc), t.name + ("_value_" if keyword else "_"), cpp_identifier(t.name))

        events: List[Event] = []
        names = set()
        for i, e in enumerate(event_opts):
            where = loc.at(spath + (_SERVICE_OPTIONS, self.ext_event.number, i), spath + (_SERVICE_OPTIONS,), spath)
            # Keywords are fine: an event's name only appears inside longer names (publish_<name>, ...).
            if not _IDENTIFIER.match(e.name):
                self.error(where, f"service {sdp.name}: event name '{e.name}' must be lower_snake_case")
                continue
            if e.name in names:
                self.error(where, f"service {sdp.name}: event '{e.name}' declared twice")
                continue
            names.add(e.name)
            desc, problem = self.resolve_message(e.type, fdp.package, fdp.name)
            if desc is None:
                self.error(where, f"event {e.name}: {problem}")
                continue
            topic = self.parse_topic(e.topic, where, f"event {e.name}", tokens, sdp.name, desc)
            if topic is None:
                continue
            self.register_topic(self.topic_key(e.topic, tokens, defaults), f"event {e.name} of {full_name}", where)
            events.append(Event(e.name, camel(e.name), self.cpp_type(desc), desc.full_name, topic, []))

        commands: List[Command] = []
        command_where: Dict[str, str] = {}
        for mi, mdp in enumerate(sdp.method):
            mpath = spath + (_SERVICE_METHOD, mi)
            where = loc.at(mpath + (_METHOD_OPTIONS, self.ext_command.number), mpath)
            if not has_command[mi]:
                self.error(loc.at(mpath), f"method {sdp.name}.{mdp.name} has no (xymqtt.command) option")
                continue
            if mdp.client_streaming or mdp.server_streaming:
                self.error(loc.at(mpath), f"method {sdp.name}.{mdp.name}: streaming methods cannot be commands")
                continue
            c = method_opts[mi].Extensions[self.ext_command]
            name = snake(mdp.name)
            method = cpp_identifier(name)  # rpc Delete -> delete_(), as protoc names a field `delete`
            if name in names:
                self.error(where, f"command {name}: name clashes with an event of service {sdp.name}")
                continue
            if method in command_where:
                self.error(where, f"command {name}: its handler method {method}() clashes with the one of the "
                                  f"command at {command_where[method]}")
                continue
            names.add(name)
            command_where[method] = where
            request, _ = self.resolve_message(mdp.input_type, fdp.package, fdp.name)
            result, _ = self.resolve_message(mdp.output_type, fdp.package, fdp.name)
            reject = None
            if c.reject:
                reject, problem = self.resolve_message(c.reject, fdp.package, fdp.name)
                if reject is None:
                    self.error(where, f"command {name}: reject: {problem}")
                    continue
            clashes = (self.envelope_clashes(name, "request", request, _ENVELOPE_KEYS, where)
                       + self.envelope_clashes(name, "result", result, _ENVELOPE_KEYS, where)
                       + (self.envelope_clashes(name, "reject", reject, _REJECT_ENVELOPE_KEYS, where) if reject else 0))
            if clashes:
                continue
            topic = self.parse_topic(c.topic, where, f"command {name}", tokens, sdp.name)
            if topic is None:
                continue
            if c.group and any(ch in c.group for ch in "/+#\0"):
                self.error(where, f"command {name}: group '{c.group}' must not contain '/', '+' or '#'")
                continue
            if c.concurrency > _MAX_CONCURRENCY:
                self.error(where, f"command {name}: concurrency {c.concurrency} is above {_MAX_CONCURRENCY}")
                continue
            if f"{name}_concurrency" in {t.param for t in tokens.values()}:
                self.error(where, f"command {name}: token {{{name}_concurrency}} clashes with the option "
                                  f"{name}_concurrency of the generated Options")
                continue
            key = self.topic_key(c.topic, tokens, defaults)
            for action in ("invoke", "resolve", "reject", "cancel"):
                self.register_topic(f"{key}/{action}", f"command {name} of {full_name}", where)
            commands.append(Command(
                name=name, method=method, camel=mdp.name[:1].upper() + mdp.name[1:],
                request_cpp=self.cpp_type(request), result_cpp=self.cpp_type(result),
                request_name=request.full_name, result_name=result.full_name,
                reject_cpp=self.cpp_type(reject) if reject else None,
                reject_name=reject.full_name if reject else None,
                expiry_seconds=c.expiry_seconds,
                group_literal=cpp_string(c.group) if c.group else None,
                concurrency=max(1, c.concurrency),
                topic=topic, doc=doc_lines(loc.comments.get(mpath, ""))))

        if len(self.errors) != n_errors:
            return None
        token_list = list(tokens.values())
        return Service(
            name=sdp.name, snake=snake(sdp.name), full_name=full_name, doc=doc_lines(loc.comments.get(spath, "")),
            tokens=token_list, required_tokens=[t for t in token_list if t.required],
            optional_tokens=[t for t in token_list if not t.required], events=events, commands=commands)

    def build_file(self, fdp) -> File:
        loc = _Locator(fdp)
        services: List[Service] = []
        uses_options = OPTIONS_FILE in self.closure(fdp.name) and self.ext_token is not None
        for si in range(len(fdp.service)):
            if not uses_options:
                continue
            s = self.build_service(fdp, si, loc)
            if s is not None:
                services.append(s)
        base = fdp.name[:-len(".proto")] if fdp.name.endswith(".proto") else fdp.name
        return File(
            proto_name=fdp.name, base=base, pb_header=base + ".pb.h", header=base + ".xymqtt.h",
            source=base + ".xymqtt.cc", mock_header=base + ".xymqtt_mock.h",
            namespace=fdp.package.split(".") if fdp.package else [], services=services,
            has_events=any(s.events for s in services), has_commands=any(s.commands for s in services),
            mocks=self.params.mocks)


def build(request, params: Parameters) -> Request:
    """Builds the model of every file to generate. @raise SchemaError listing every schema error."""
    builder = _Builder(request, params)
    by_name = {f.name: f for f in request.proto_file}
    # options.proto itself only needs protoc's C++ output.
    files = [builder.build_file(by_name[name]) for name in request.file_to_generate if name != OPTIONS_FILE]
    if builder.errors:
        raise SchemaError(builder.errors)
    return Request(files, params)
