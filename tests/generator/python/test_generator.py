"""Tests of protoc-gen-xymqtt run through protoc: golden output, schema errors, parameters.

Environment: PROTOC (protoc), PLUGIN (an executable protoc-gen-xymqtt), SCHEMA_DIR (schemas/ with
xymqtt/options.proto). Set XYMQTT_UPDATE_GOLDEN=1 to rewrite tests/generator/golden/expected.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ERRORS = os.path.join(TESTS, "schemas")
GOLDEN = os.path.join(TESTS, "golden")
PROTOC = os.environ.get("PROTOC", "protoc")
PLUGIN = os.environ.get("PLUGIN")
SCHEMA_DIR = os.environ.get("SCHEMA_DIR", os.path.join(os.path.dirname(os.path.dirname(TESTS)), "schemas"))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(TESTS)), "generator"))


def run_protoc(include_dir, protos, out_dir, opt=None):
    args = [PROTOC, f"--plugin=protoc-gen-xymqtt={PLUGIN}", f"--xymqtt_out={out_dir}",
            f"-I{include_dir}", f"-I{SCHEMA_DIR}"]
    if opt is not None:
        args.append(f"--xymqtt_opt={opt}")
    args += protos
    return subprocess.run(args, cwd=include_dir, capture_output=True, text=True)


def expected_errors(path):
    """(line, regex) of each `// error: <regex>` marker in a schema."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            m = re.search(r"//\s*error:\s*(.*)$", line)
            if m:
                out.append((n, m.group(1).strip()))
    return out


class SchemaErrors(unittest.TestCase):
    def check(self, *names):
        with tempfile.TemporaryDirectory() as out:
            protos = [f"errors/{n}.proto" for n in names]
            r = run_protoc(ERRORS, protos, out)
            self.assertNotEqual(r.returncode, 0, f"protoc accepted {protos}")
            expected = [e for n in names for e in expected_errors(os.path.join(ERRORS, "errors", n + ".proto"))]
            self.assertTrue(expected, "schema has no // error: marker")
            for (line, regex), name in zip(expected, names[-1:] * len(expected)):
                pattern = rf"errors/{re.escape(name)}\.proto:{line}:\d+: .*{regex}"
                self.assertRegex(r.stderr, pattern)
            return r

    def test_unknown_event_type(self):
        self.check("unknown_event_type")

    def test_unknown_token(self):
        self.check("unknown_token")

    def test_command_topic_may_not_use_request_fields(self):
        self.check("unknown_command_token")

    def test_duplicate_event_topic(self):
        self.check("duplicate_topic")

    def test_duplicate_command_topic(self):
        self.check("duplicate_command_topic")

    def test_duplicate_topic_across_files(self):
        self.check("dup_across_a", "dup_across_b")

    def test_wildcard_in_topic(self):
        self.check("wildcard_topic")

    def test_empty_topic_level(self):
        self.check("empty_level_topic")

    def test_token_not_a_whole_level(self):
        self.check("partial_token_topic")

    def test_unknown_reject_type(self):
        self.check("unknown_reject_type")

    def test_rpc_without_command_option(self):
        self.check("missing_command_option")

    def test_reserved_token_name(self):
        self.check("reserved_token")

    def test_field_token_of_wrong_type(self):
        self.check("bad_field_token")

    def test_type_from_a_file_not_imported(self):
        self.check("not_imported_b", "not_imported")

    def test_result_field_named_like_the_envelope(self):
        self.check("envelope_result_field")

    def test_reject_fields_named_like_the_envelope(self):
        self.check("envelope_reject_fields")

    def test_handler_methods_that_clash_once_escaped(self):
        self.check("handler_method_clash")

    def test_concurrency_above_the_runtime_limit(self):
        self.check("concurrency_too_high")

    def test_token_named_like_a_concurrency_option(self):
        self.check("concurrency_option_clash")

    def test_error_format_is_file_line_col(self):
        r = self.check("unknown_event_type")
        self.assertRegex(r.stderr, r"(?m)errors/unknown_event_type\.proto:9:3: event tick: unknown message type 'Tock'$")


class Parameters(unittest.TestCase):
    def generate(self, opt):
        out = tempfile.mkdtemp()
        r = run_protoc(SCHEMA_DIR, ["examples/publisher.proto"], out, opt)
        return r, out

    def test_unknown_parameter_is_an_error(self):
        r, _ = self.generate("mocks=true,colour=blue")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown parameter 'colour' (known: mocks)", r.stderr)

    def test_bad_value_is_an_error(self):
        r, _ = self.generate("mocks=yes")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("mocks must be true or false, not 'yes'", r.stderr)

    def test_parameter_without_value_is_an_error(self):
        r, _ = self.generate("mocks")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not of the form key=value", r.stderr)

    def test_repeated_parameter_is_an_error(self):
        r, _ = self.generate("mocks=true,mocks=false")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("given twice", r.stderr)

    def test_version(self):
        with open(os.path.join(os.path.dirname(os.path.dirname(TESTS)), "VERSION")) as f:
            version = f.readline().strip()
        r = subprocess.run([PLUGIN, "--version"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), f"protoc-gen-xymqtt {version}")

    def test_mocks_only_when_asked(self):
        for opt, mocks in ((None, False), ("mocks=false", False), ("mocks=true", True)):
            r, out = self.generate(opt)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(os.path.exists(os.path.join(out, "examples/publisher.xymqtt.h")))
            self.assertTrue(os.path.exists(os.path.join(out, "examples/publisher.xymqtt.cc")))
            self.assertEqual(os.path.exists(os.path.join(out, "examples/publisher.xymqtt_mock.h")), mocks, opt)


class Golden(unittest.TestCase):
    FILES = ["golden.xymqtt.h", "golden.xymqtt.cc", "golden.xymqtt_mock.h"]

    def test_golden_output(self):
        with tempfile.TemporaryDirectory() as out:
            r = run_protoc(GOLDEN, ["golden.proto"], out, "mocks=true")
            self.assertEqual(r.returncode, 0, r.stderr)
            for name in self.FILES:
                with open(os.path.join(out, name)) as f:
                    actual = f.read()
                path = os.path.join(GOLDEN, "expected", name)
                if os.environ.get("XYMQTT_UPDATE_GOLDEN") == "1":
                    with open(path, "w") as f:
                        f.write(actual)
                with open(path) as f:
                    self.assertEqual(actual, f.read(), f"{name} differs from golden/expected/{name} "
                                                       "(XYMQTT_UPDATE_GOLDEN=1 rewrites it)")

    def test_xy_mqtt_topics_with_default_tokens(self):
        with tempfile.TemporaryDirectory() as out:
            r = run_protoc(SCHEMA_DIR, ["examples/publisher.proto"], out)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(out, "examples/publisher.xymqtt.h")) as f:
                header = f.read()
            self.assertIn('std::string system = "publisher";', header)
            with open(os.path.join(out, "examples/publisher.xymqtt.cc")) as f:
                source = f.read()
            self.assertIn('tick_topic_ = "evt/" + system_ + "/tick";', source)
            self.assertIn('ping_topic_ = "cmd/" + system_ + "/ping";', source)

    def test_output_is_deterministic(self):
        outs = []
        for _ in range(2):
            with tempfile.TemporaryDirectory() as out:
                r = run_protoc(GOLDEN, ["golden.proto"], out, "mocks=true")
                self.assertEqual(r.returncode, 0, r.stderr)
                files = {}
                for n in self.FILES:
                    with open(os.path.join(out, n)) as f:
                        files[n] = f.read()
                outs.append(files)
        self.assertEqual(outs[0], outs[1])


class Model(unittest.TestCase):
    """Unit tests of helpers that need no protoc."""

    def test_parameters(self):
        from xymqtt_gen import model
        self.assertFalse(model.parse_parameters("").mocks)
        self.assertTrue(model.parse_parameters("mocks=true").mocks)
        with self.assertRaises(model.ParameterError):
            model.parse_parameters("namespace=x")

    def test_command_names_corpus(self):
        """The corpus the command-line tool's test reads too: both derive the same command names."""
        from xymqtt_gen import model
        corpus = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schema_rules",
                              "command_names.txt")
        with open(corpus, encoding="utf-8") as f:
            cases = [line.split() for line in f if line.strip() and not line.startswith("#")]
        self.assertGreater(len(cases), 10)
        for rpc, command in cases:
            with self.subTest(rpc=rpc):
                self.assertEqual(model.snake(rpc), command)

    def test_names(self):
        from xymqtt_gen import model
        self.assertEqual(model.snake("GetStock"), "get_stock")
        self.assertEqual(model.snake("Ping"), "ping")
        self.assertEqual(model.snake("HTTPGet"), "http_get")
        self.assertEqual(model.camel("stock_changed"), "StockChanged")
        self.assertEqual(model.cpp_string('a"b\\c\n'), '"a\\"b\\\\c\\n"')


class SchemaRulesTable(unittest.TestCase):
    """The generator's schema rules are its table, schema_rules.json, which the command-line tool builds in
    (tests/tools/schema_rules_tests.cpp checks the tool's side): the model applies the table, not rules of
    its own."""

    TABLE = os.path.join(os.path.dirname(os.path.dirname(TESTS)), "generator", "xymqtt_gen", "schema_rules.json")

    def table(self):
        with open(self.TABLE, encoding="utf-8") as f:
            return json.load(f)

    def test_the_model_reads_the_table(self):
        from xymqtt_gen import model
        self.assertEqual(os.path.realpath(model.SchemaRules.PATH), os.path.realpath(self.TABLE))
        self.assertEqual(model.RULES.table, self.table())

    def test_the_model_follows_the_table(self):
        """The file with each kind of rule changed: a model with rules of its own would not follow."""
        from google.protobuf.compiler import plugin_pb2
        from xymqtt_gen import model
        table = self.table()
        table["snake_case"]["substitutions"].append({"search": "_", "replacement": "-"})
        table["snake_case"]["lower_case"] = False
        table["token_name"] = "[a-z]+"
        for check in table["topic_pattern_checks"]:
            if check.get("search") == "[+#]":
                check["refusal"] = "no wildcards in <pattern>, <level>"
        table["topic_pattern_checks"].append({"search": "^tmp/", "refusal": "'<pattern>' is scratch"})
        table["topic_level_checks"].append({"match": "x", "refusal": "level <level> of <pattern>"})
        saved, model.RULES = model.RULES, model.SchemaRules(table)
        try:
            self.assertEqual(model.snake("GetStock"), "Get-Stock")
            builder = model._Builder(plugin_pb2.CodeGeneratorRequest(), model.Parameters())
            for pattern, error in (("evt/+/x", "no wildcards in evt/+/x, <level>"),
                                   ("tmp/a", "'tmp/a' is scratch"),
                                   ("evt/x", "level x of evt/x"),
                                   ("evt/{env_2}", "malformed topic 'evt/{env_2}': '{env_2}' is not a whole-level "
                                                   "token like {name}")):
                with self.subTest(pattern=pattern):
                    self.assertIsNone(builder.parse_topic(pattern, "t.proto:1:1", "event e", {}, "S"))
                    self.assertEqual(builder.errors[-1], f"t.proto:1:1: event e: {error}")
            self.assertEqual(model._Builder.topic_key("evt/{system}/{env_2}", {}, {"system": "s"}), "evt/s/{env_2}")
        finally:
            model.RULES = saved
        self.assertEqual(model.snake("GetStock"), "get_stock")
        self.assertEqual(model._Builder.topic_key("evt/{system}/{env_2}", {}, {"system": "s"}), "evt/s/{}")

    def test_a_table_it_cannot_read_all_of_is_refused(self):
        """As the tool refuses it: a rule one side would skip is an error on both."""
        from xymqtt_gen import model
        changes = [
            lambda t: t.update(topic_checks=[]),
            lambda t: t["topic_level_checks"][0].update(unless="x"),
            lambda t: t["topic_pattern_checks"][0].update(unless_token=True),
            lambda t: t["snake_case"]["substitutions"][0].update(replacement="$&"),  # $& and $12: ECMAScript's
            lambda t: t["snake_case"]["substitutions"][0].update(replacement="$12"),
            lambda t: t.update(token_name="[a-z"),
        ]
        for i, change in enumerate(changes):
            table = self.table()
            change(table)
            with self.subTest(change=i), self.assertRaises((ValueError, re.error)):
                model.SchemaRules(table)


class TopicPatterns(unittest.TestCase):
    """The shared corpus of topic patterns, through protoc."""

    def test_topic_patterns_corpus(self):
        """The corpus the command-line tool's test reads too: both accept and refuse the same patterns."""
        corpus = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schema_rules",
                              "topic_patterns.txt")
        with open(corpus, encoding="utf-8") as f:
            cases = [line.rstrip("\n").split(" ", 2) for line in f if line.strip() and not line.startswith("#")]
        self.assertGreater(len(cases), 15)
        for kind, pattern, expect in cases:
            with self.subTest(kind=kind, pattern=pattern), tempfile.TemporaryDirectory() as d:
                proto = ('syntax = "proto3";\npackage corpus;\nimport "xymqtt/options.proto";\n'
                         "message E { string id = 1; int64 n = 2; fixed32 k = 3; repeated string tags = 4; "
                         "bool ok = 5; bytes raw = 6; }\nmessage R {}\nservice S {\n"
                         '  option (xymqtt.token) = { name: "system" default: "s" };\n')
                if kind == "event":
                    proto += f'  option (xymqtt.event) = {{ name: "e" type: "E" topic: "{pattern}" }};\n'
                else:
                    proto += f'  rpc Ping(R) returns (R) {{ option (xymqtt.command) = {{ topic: "{pattern}" }}; }}\n'
                with open(os.path.join(d, "t.proto"), "w", encoding="utf-8") as f:
                    f.write(proto + "}\n")
                out = os.path.join(d, "out")
                os.mkdir(out)
                r = run_protoc(d, ["t.proto"], out)
                if expect == "ok":
                    self.assertEqual(r.returncode, 0, r.stderr)
                else:
                    self.assertNotEqual(r.returncode, 0)
                    self.assertIn(("event e: " if kind == "event" else "command ping: ") + expect, r.stderr)


if __name__ == "__main__":
    unittest.main()
