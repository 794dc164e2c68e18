// The command-line tool's schema rules are the generator's table (generator/xymqtt_gen/schema_rules.json),
// built in: the built-in copy is that file, and what the tool derives follows the table, not code of its
// own. The same checks of the generator's side are in tests/generator/python (SchemaRulesTable).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "schema_rules.h"

using xymqtt::cli::schema_rules;
using json = nlohmann::json;

namespace {

const std::string table_path = std::string(XYMQTT_SOURCE_DIR) + "/generator/xymqtt_gen/schema_rules.json";

std::string read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    std::stringstream buf;
    buf << in.rdbuf();
    return buf.str();
}

}  // namespace

TEST_CASE("schema rules: the tool's built-in table is the generator's file", "[cli][schema_rules]") {
    CHECK(schema_rules::built_in().source() == read(table_path));
}

TEST_CASE("schema rules: the built-in rules give the shared corpus's command names", "[cli][schema_rules]") {
    std::istringstream corpus(read(std::string(XYMQTT_SOURCE_DIR) + "/tests/schema_rules/command_names.txt"));
    int cases = 0;
    for (std::string line; std::getline(corpus, line);) {
        if (line.empty() || line[0] == '#') continue;
        const auto space = line.find(' ');
        REQUIRE(space != std::string::npos);
        INFO(line);
        CHECK(schema_rules::built_in().snake(line.substr(0, space)) == line.substr(space + 1));
        ++cases;
    }
    CHECK(cases > 10);
}

TEST_CASE("schema rules: what the tool derives follows the table", "[cli][schema_rules]") {
    // The file with each kind of rule changed: a tool with rules of its own would not follow.
    json table = json::parse(read(table_path));
    table["snake_case"]["substitutions"].push_back({{"search", "_"}, {"replacement", "-"}});
    table["snake_case"]["lower_case"] = false;
    table["token_name"] = "[a-z]+";
    for (auto& c : table["topic_pattern_checks"])
        if (c.contains("search") && c["search"] == "[+#]") c["refusal"] = "no wildcards in <pattern>, <level>";
    table["topic_pattern_checks"].push_back({{"search", "^tmp/"}, {"refusal", "'<pattern>' is scratch"}});
    table["topic_level_checks"].push_back({{"match", "x"}, {"refusal", "level <level> of <pattern>"}});
    const schema_rules rules(table.dump());

    CHECK(rules.snake("GetStock") == "Get-Stock");
    CHECK(rules.is_token_name("system"));
    CHECK_FALSE(rules.is_token_name("env_2"));
    CHECK(rules.level_token("{system}") == "system");
    CHECK_FALSE(rules.level_token("{env_2}"));
    CHECK(rules.pattern_problem("evt/+/x") == "no wildcards in evt/+/x, <level>");
    CHECK(rules.pattern_problem("tmp/a") == "'tmp/a' is scratch");
    CHECK_FALSE(rules.pattern_problem("evt/a"));
    CHECK(rules.level_problem("evt/x", "x") == "level x of evt/x");
    CHECK(rules.level_problem("evt/{env_2}", "{env_2}") ==
          "malformed topic 'evt/{env_2}': '{env_2}' is not a whole-level token like {name}");
    CHECK_FALSE(rules.level_problem("evt/{system}", "{system}"));

    // The built-in table, for comparison: the same texts, the rules as committed.
    const auto& built_in = schema_rules::built_in();
    CHECK(built_in.snake("GetStock") == "get_stock");
    CHECK(built_in.pattern_problem("evt/+/x") ==
          "malformed topic 'evt/+/x': must not contain the wildcards '+' or '#'");
    CHECK_FALSE(built_in.pattern_problem("tmp/a"));
    CHECK_FALSE(built_in.level_problem("evt/{env_2}", "{env_2}"));
    const std::string nul("a\0b", 3);
    CHECK(built_in.pattern_problem(nul) == "malformed topic '" + nul + "': must not contain NUL");
}

TEST_CASE("schema rules: a table the tool cannot read all of is refused", "[cli][schema_rules]") {
    const json table = json::parse(read(table_path));
    auto with = [&](auto change) {
        json t = table;
        change(t);
        return t.dump();
    };
    // Unknown keys: a rule the tool would skip while the generator applies it.
    CHECK_THROWS_AS(schema_rules(with([](json& t) { t["topic_checks"] = json::array(); })), std::invalid_argument);
    CHECK_THROWS_AS(schema_rules(with([](json& t) { t["topic_level_checks"][0]["unless"] = "x"; })),
                    std::invalid_argument);
    CHECK_THROWS_AS(schema_rules(with([](json& t) { t["topic_pattern_checks"][0]["unless_token"] = true; })),
                    std::invalid_argument);
    // '$&' and two-digit groups read differently in Python.
    CHECK_THROWS_AS(schema_rules(with([](json& t) { t["snake_case"]["substitutions"][0]["replacement"] = "$&"; })),
                    std::invalid_argument);
    CHECK_THROWS_AS(schema_rules(with([](json& t) { t["snake_case"]["substitutions"][0]["replacement"] = "$12"; })),
                    std::invalid_argument);
    CHECK_THROWS_AS(schema_rules(with([](json& t) { t["token_name"] = "[a-z"; })), std::invalid_argument);
    CHECK_THROWS_AS(schema_rules("{"), std::invalid_argument);
}
