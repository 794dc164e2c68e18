#include "schema_rules.h"

#include <nlohmann/json.hpp>

#include <cctype>
#include <initializer_list>
#include <stdexcept>
#include <tuple>

#include "schema_rules_json.h"  // generated from the generator's table (tools/CMakeLists.txt)

namespace xymqtt::cli {

namespace {

using json = nlohmann::json;

[[noreturn]] void bad_table(const std::string& what) { throw std::invalid_argument("schema rules: " + what); }

void only_keys(const json& object, std::initializer_list<const char*> keys, const std::string& where) {
    if (!object.is_object()) bad_table(where + " is not an object");
    for (const auto& item : object.items()) {
        bool known = false;
        for (const char* k : keys) known = known || item.key() == k;
        if (!known) bad_table("unknown key '" + item.key() + "' in " + where);
    }
}

const json& required(const json& object, const char* key, const std::string& where) {
    const auto it = object.find(key);
    if (it == object.end()) bad_table(where + " has no '" + key + "'");
    return *it;
}

std::string text(const json& value, const std::string& where) {
    if (!value.is_string()) bad_table(where + " is not a string");
    return value.get<std::string>();
}

std::regex compile(const std::string& expression, const std::string& where) {
    try {
        return std::regex(expression);
    } catch (const std::regex_error& e) {
        bad_table(where + ": invalid regular expression '" + expression + "': " + e.what());
    }
}

// <pattern> and <level> in one pass, so that a pattern that holds `<level>` is printed as it is.
std::string refusal_text(const std::string& templ, const std::string& pattern, const std::string* level) {
    std::string out;
    for (std::size_t i = 0; i < templ.size();) {
        if (templ.compare(i, 9, "<pattern>") == 0) {
            out += pattern;
            i += 9;
        } else if (level && templ.compare(i, 7, "<level>") == 0) {
            out += *level;
            i += 7;
        } else {
            out += templ[i++];
        }
    }
    return out;
}

}  // namespace

schema_rules::schema_rules(const std::string& source) : source_(source) {
    const json table = json::parse(source, nullptr, false);
    if (table.is_discarded()) bad_table("not JSON");
    only_keys(table, {"about", "snake_case", "token_name", "topic_pattern_checks", "topic_level_checks"}, "the table");

    const auto& snake_case = required(table, "snake_case", "the table");
    only_keys(snake_case, {"substitutions", "lower_case"}, "snake_case");
    // $1 .. $9 only: ECMAScript's other forms ($&, $$, two digits) mean something else to the generator.
    static const std::regex plain_replacement("([^$]|\\$[1-9](?![0-9]))*");
    for (const auto& sub : required(snake_case, "substitutions", "snake_case")) {
        only_keys(sub, {"search", "replacement"}, "a substitution");
        const auto search = text(required(sub, "search", "a substitution"), "search");
        auto replacement = text(required(sub, "replacement", "a substitution"), "replacement");
        if (!std::regex_match(replacement, plain_replacement))
            bad_table("replacement '" + replacement + "' uses '$' other than $1 to $9");
        substitutions_.push_back({compile(search, "snake_case"), std::move(replacement)});
    }
    const auto& lower = required(snake_case, "lower_case", "snake_case");
    if (!lower.is_boolean()) bad_table("snake_case.lower_case is not true or false");
    lower_case_ = lower.get<bool>();

    const auto token_name = text(required(table, "token_name", "the table"), "token_name");
    token_name_ = compile(token_name, "token_name");
    token_ = compile("\\{(" + token_name + ")\\}", "token_name");

    for (const auto& [key, checks, level] : {std::tuple{"topic_pattern_checks", &pattern_checks_, false},
                                             std::tuple{"topic_level_checks", &level_checks_, true}}) {
        for (const auto& c : required(table, key, "the table")) {
            if (level)
                only_keys(c, {"search", "match", "unless_token", "refusal"}, key);
            else
                only_keys(c, {"search", "match", "refusal"}, key);
            check ck;
            ck.whole = c.contains("match");
            if (ck.whole == c.contains("search"))
                bad_table(std::string("a check of ") + key + " needs search or match");
            ck.regex = compile(text(c.at(ck.whole ? "match" : "search"), key), key);
            if (c.contains("unless_token")) {
                if (!c.at("unless_token").is_boolean()) bad_table("unless_token is not true or false");
                ck.unless_token = c.at("unless_token").get<bool>();
            }
            ck.refusal = text(required(c, "refusal", key), "refusal");
            checks->push_back(std::move(ck));
        }
    }
}

const schema_rules& schema_rules::built_in() {
    static const schema_rules rules(schema_rules_json);
    return rules;
}

std::string schema_rules::snake(const std::string& name) const {
    std::string out = name;
    for (const auto& sub : substitutions_) out = std::regex_replace(out, sub.search, sub.replacement);
    if (lower_case_)
        for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

bool schema_rules::is_token_name(const std::string& name) const { return std::regex_match(name, token_name_); }

std::optional<std::string> schema_rules::level_token(const std::string& level) const {
    std::smatch m;
    if (std::regex_match(level, m, token_)) return m[1].str();
    return std::nullopt;
}

std::optional<std::string> schema_rules::first_refusal(const std::vector<check>& checks, const std::string& text,
                                                       const std::string& pattern, const std::string* level) const {
    for (const auto& c : checks) {
        const bool hit = c.whole ? std::regex_match(text, c.regex) : std::regex_search(text, c.regex);
        if (hit && !(c.unless_token && level_token(text))) return refusal_text(c.refusal, pattern, level);
    }
    return std::nullopt;
}

std::optional<std::string> schema_rules::pattern_problem(const std::string& pattern) const {
    return first_refusal(pattern_checks_, pattern, pattern, nullptr);
}

std::optional<std::string> schema_rules::level_problem(const std::string& pattern, const std::string& level) const {
    return first_refusal(level_checks_, level, pattern, &level);
}

}  // namespace xymqtt::cli
