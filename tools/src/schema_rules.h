// The schema rules the generator applies too, as data: its table generator/xymqtt_gen/schema_rules.json,
// built into the tool (no file to find at run time). Snake case of command names, token names and the
// topic-pattern checks that need no schema; the checks that need the schema are code (schema.cpp).
// The table itself says how its entries are read; generator/xymqtt_gen/model.py reads them the same way.
#pragma once

#include <optional>
#include <regex>
#include <string>
#include <vector>

namespace xymqtt::cli {

class schema_rules {
public:
    /// Reads a table. @throw std::invalid_argument if `json` is not one (unknown keys included: a rule
    /// the tool would ignore is an error, not a silent difference from the generator).
    explicit schema_rules(const std::string& json);

    /// The table built into the tool.
    static const schema_rules& built_in();

    /// The JSON text the rules were read from.
    const std::string& source() const { return source_; }

    /// `GetStock` -> `get_stock`, `HTTPPing` -> `http_ping`: command names from rpc names.
    std::string snake(const std::string& name) const;
    bool is_token_name(const std::string& name) const;
    /// The name of a whole-level token `{name}`, or nothing.
    std::optional<std::string> level_token(const std::string& level) const;
    /// What the generator says of a topic pattern as a whole, or nothing.
    std::optional<std::string> pattern_problem(const std::string& pattern) const;
    /// What the generator says of one level of `pattern` before looking the schema up, or nothing.
    std::optional<std::string> level_problem(const std::string& pattern, const std::string& level) const;

private:
    struct substitution {
        std::regex search;
        std::string replacement;  // ECMAScript's format: $1 .. $9
    };
    struct check {
        std::regex regex;
        bool whole = false;  // `match`: the whole text; else `search`: anywhere in it
        bool unless_token = false;
        std::string refusal;  // <pattern> and <level> stand for the text checked
    };

    std::optional<std::string> first_refusal(const std::vector<check>& checks, const std::string& text,
                                             const std::string& pattern, const std::string* level) const;

    std::string source_;
    std::vector<substitution> substitutions_;
    bool lower_case_ = false;
    std::regex token_name_;
    std::regex token_;
    std::vector<check> pattern_checks_;
    std::vector<check> level_checks_;
};

}  // namespace xymqtt::cli
