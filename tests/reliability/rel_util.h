// Helpers shared by the reliability tests.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "history_journal.h"
#include "runtime/util.h"

namespace xymqtt::test {

/// An environment variable as a number, or `fallback`.
inline std::uint64_t env_number(const char* name, std::uint64_t fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

inline std::string env_string(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::string(v) : fallback;
}

/// Records (lines split into words) of a journal written by rel_agent.
inline std::vector<std::vector<std::string>> journal_records(const std::string& path) { return read_journal(path); }

/// Does the journal contain a record whose first word is `word` (and second `arg`, if given)?
inline bool journal_has(const std::string& path, const std::string& word, const std::string& arg = {}) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
        if (line == word && arg.empty()) return true;
        if (!arg.empty() && line == word + " " + arg) return true;
    }
    return false;
}

/// Appends one line to docs-style report file named by XYMQTT_REL_REPORT (used by scripts/reliability).
inline void report_line(const std::string& line) {
    if (const char* f = std::getenv("XYMQTT_REL_REPORT")) {
        std::ofstream out(f, std::ios::app);
        out << line << '\n';
    }
}

}  // namespace xymqtt::test
