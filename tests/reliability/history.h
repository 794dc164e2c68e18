// The history checker: a total-queue check (in the spirit of Jepsen's) over what the API accepted and
// what handlers completed, with the faults of the run on the same clock.
//
// It ingests, from any number of journals (hist_agent writes them; the test adds the faults itself):
//   tried(stream, n, t)                about to publish / call n (the API has not accepted it yet)
//   accepted(stream, n, t)             publish() / call() returned: the message is stored, it must arrive
//   acked(stream, n, t)                the publish future completed (PUBCOMP)
//   handled(subscription, stream, n, t) a handler completed for n (once per run of the handler)
//   fault(kind, start, end, bound)     a fault was injected between start and end
//   finished(stream)                   the producer finished: its outbox is empty, so everything it
//                                      accepted has left it
// and reports, per subscription (a subscription is expected to handle every message of its streams):
//   lost        acked, or accepted by a producer that finished, and never handled      -> must be 0
//   stray       handled but never tried (a message nobody sent)                       -> must be 0
//   duplicates  handler runs beyond the first; each is charged to a fault that explains it (see below)
//   unexpected  a duplicate with no fault between the message's first attempt (tried, else accepted,
//               else its first handling) and the duplicate run -> a bug, must be 0.  (Not "since the first
//               handling": a publisher whose connection is cut re-sends its in-flight messages, and both
//               copies are often handled after the fault, once everything has reconnected.)
// and per fault: the duplicates charged to it against its bound (the in-flight window it can re-deliver,
// see docs/reliability.md, "History checker").
//
// Charging. A duplicate is explained by every fault that started before its run and ended after the
// message's first attempt. Which of them caused it cannot be read from the history: a subscriber running
// far behind handles the copies a cut made only after a later fault. So the check is whether some
// assignment of every duplicate to one of its explaining faults keeps each fault within its bound (a
// bipartite matching with capacities, found by augmenting paths). Duplicates that fit no such assignment
// are charged to the most recent fault before them, which then reports over its bound.
//
// A broker killed hard (SIGKILL) forgets what it acknowledged since its last autosave. A fault can carry
// such a `forget_window`: a message acknowledged within that window before the kill (and accepted before
// its end) that never arrives is counted as `broker_forgot`, apart from `lost`; messages first handled in
// the window may be delivered again, and are added to the fault's bound.
//
// Times are CLOCK_MONOTONIC microseconds, the same clock in every process of the machine.
#pragma once

#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace xymqtt::test {

/// CLOCK_MONOTONIC in microseconds: comparable between processes of one machine.
inline std::int64_t mono_us() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

class history {
public:
    static constexpr std::int64_t never = -1;

    struct fault_record {
        std::string kind;
        std::int64_t start = 0, end = 0;
        std::uint64_t bound = 0;          ///< duplicates it may cause (its in-flight windows)
        std::int64_t forget_window = 0;   ///< > 0: a hard broker kill that forgets this much before start
        std::uint64_t duplicates = 0;     ///< filled in by check()
        std::uint64_t window_bound = 0;   ///< filled in by check(): messages handled in the forget window
        std::string note;                 ///< what the test observed of it (shown when it is over its bound)
        /// If set, the only messages (stream, n) whose duplicates it can explain.
        std::shared_ptr<const std::set<std::pair<std::string, std::uint64_t>>> only;
        /// @return whether a copy of message (stream, n) handled at `time` can be this fault's doing.
        bool may_explain(const std::string& stream, std::uint64_t n, std::int64_t time) const {
            return start <= time && (!only || only->count({stream, n}) != 0);
        }
    };

    struct duplicate {
        std::string subscription, stream;
        std::uint64_t n = 0;
        std::int64_t time = 0;
        std::int64_t first = never;  ///< when the message was first handled
        int fault = -1;  ///< index in faults, -1: none before it
        bool unexpected = false;
    };

    struct lost_message {
        std::string stream;
        std::uint64_t n = 0;
        std::int64_t accepted = never, acked = never;
    };

    struct subscription_report {
        std::string name;
        std::uint64_t accepted = 0, acked = 0, handled = 0, handler_runs = 0, lost = 0, broker_forgot = 0,
                      stray = 0, unconfirmed = 0, duplicates = 0, unexpected = 0;
        std::vector<lost_message> lost_ids;  ///< the first 50
    };

    struct report {
        std::vector<subscription_report> subscriptions;
        std::vector<fault_record> faults;
        std::vector<duplicate> duplicates;
        std::uint64_t accepted = 0, handled = 0, lost = 0, broker_forgot = 0, stray = 0, duplicates_total = 0,
                      unexpected = 0, max_per_fault = 0, faults_over_bound = 0, bound_total = 0;
        std::map<std::string, std::uint64_t> faults_by_kind, duplicates_by_kind;

        bool ok() const { return lost == 0 && stray == 0 && unexpected == 0 && faults_over_bound == 0; }
        std::string text() const;
    };

    /// `subscription` must handle every message of `stream`.
    void expect(const std::string& subscription, const std::string& stream) {
        subs_[subscription].streams.insert(stream);
        streams_[stream];
    }
    void tried(const std::string& stream, std::uint64_t n, std::int64_t t) { set_first(streams_[stream].tried, n, t); }
    void accepted(const std::string& stream, std::uint64_t n, std::int64_t t) {
        set_first(streams_[stream].accepted, n, t);
    }
    void acked(const std::string& stream, std::uint64_t n, std::int64_t t) { set_first(streams_[stream].acked, n, t); }
    void finished(const std::string& stream) { streams_[stream].finished = true; }
    /// The producer of `stream` was killed at `t`. For streams whose accepted() is not durable (publish()
    /// returns before its store commit), a message accepted before the kill and never acknowledged may
    /// never have been stored: it is not counted lost.
    void producer_killed(const std::string& stream, std::int64_t t) { streams_[stream].producer_kills.push_back(t); }
    void handled(const std::string& subscription, const std::string& stream, std::uint64_t n, std::int64_t t) {
        auto& s = subs_[subscription];
        auto& h = s.handled[stream];
        if (h.count.size() <= n) {
            h.count.resize(std::max<std::size_t>(n + 1, h.count.size() * 2), 0);
            h.first.resize(h.count.size(), never);
        }
        ++s.runs;
        if (h.count[n]++ == 0) {
            h.first[n] = t;
            ++h.distinct;
        } else {
            s.dups.push_back({subscription, stream, n, t, h.first[n], -1, false});
        }
    }
    /// @return the fault's index (its bound can be set later, e.g. from a restarted publisher's outbox).
    std::size_t fault(const std::string& kind, std::int64_t start, std::int64_t end, std::uint64_t bound,
                      std::int64_t forget_window = 0) {
        faults_.push_back({kind, start, end, bound, forget_window, 0, 0, {}, nullptr});
        return faults_.size() - 1;
    }
    /// Fault `fault` can explain duplicates of these messages (stream, n) only.
    void only(std::size_t fault, std::set<std::pair<std::string, std::uint64_t>> messages) {
        faults_.at(fault).only = std::make_shared<const std::set<std::pair<std::string, std::uint64_t>>>(std::move(messages));
    }
    /// Adds what the test observed of fault `fault` (e.g. whether the broker's exit save was seen).
    void note(std::size_t fault, const std::string& text) {
        auto& n = faults_.at(fault).note;
        n += (n.empty() ? "" : "; ") + text;
    }
    void add_bound(std::size_t fault, std::uint64_t extra) { faults_.at(fault).bound += extra; }
    std::size_t fault_count() const { return faults_.size(); }

    /// Distinct messages `subscription` handled so far (all its streams).
    std::uint64_t distinct(const std::string& subscription) const {
        auto it = subs_.find(subscription);
        if (it == subs_.end()) return 0;
        std::uint64_t d = 0;
        for (const auto& [name, h] : it->second.handled) d += h.distinct;
        return d;
    }
    /// The messages of `stream` accepted and not handled by some expecting subscription, with the times
    /// they were accepted.
    std::vector<std::pair<std::uint64_t, std::int64_t>> unhandled(const std::string& stream) const {
        std::vector<std::pair<std::uint64_t, std::int64_t>> out;
        const auto st = streams_.find(stream);
        if (st == streams_.end()) return out;
        const auto& a = st->second.accepted;
        for (std::uint64_t i = first_unhandled(stream, 0); i < accepted_end(stream); i = first_unhandled(stream, i + 1))
            if (a[i] != never) out.emplace_back(i, a[i]);
        return out;
    }
    /// Whether a message accepted at `t` may have been forgotten by a hard-killed broker: accepted within a
    /// kill's forget window before it, or during it. (For calls, whose acknowledgement is not journalled.)
    bool in_forget_window(std::int64_t t) const {
        for (const auto& f : faults_)
            if (f.forget_window > 0 && t >= f.start - f.forget_window && t <= f.end) return true;
        return false;
    }
    /// The first n >= from of `stream` that was accepted and that some expecting subscription has not
    /// handled yet; accepted_end(stream) if there is none. (A watermark: callers pass the last answer.)
    std::uint64_t first_unhandled(const std::string& stream, std::uint64_t from) const {
        const auto st = streams_.find(stream);
        if (st == streams_.end()) return from;
        const auto& a = st->second.accepted;
        const auto end = accepted_end(stream);
        for (std::uint64_t i = from; i < end; ++i) {
            if (a[i] == never) continue;
            for (const auto& [name, s] : subs_) {
                if (!s.streams.count(stream)) continue;
                const auto h = s.handled.find(stream);
                if (h == s.handled.end() || i >= h->second.count.size() || h->second.count[i] == 0) return i;
            }
        }
        return end;
    }
    /// Highest n + 1 accepted on `stream` so far (0 if none).
    std::uint64_t accepted_end(const std::string& stream) const {
        const auto st = streams_.find(stream);
        if (st == streams_.end()) return 0;
        const auto& a = st->second.accepted;
        for (std::size_t i = a.size(); i > 0; --i)
            if (a[i - 1] != never) return i;
        return 0;
    }

    report check() const;

private:
    static void charge(report& r, const std::vector<std::vector<std::size_t>>& candidates,
                       const std::vector<std::size_t>& order);

    struct stream_state {
        std::vector<std::int64_t> tried, accepted, acked;
        std::vector<std::int64_t> producer_kills;
        bool finished = false;
    };
    struct handled_state {
        std::vector<std::uint32_t> count;
        std::vector<std::int64_t> first;
        std::uint64_t distinct = 0;
    };
    struct sub_state {
        std::set<std::string> streams;
        std::map<std::string, handled_state> handled;
        std::vector<duplicate> dups;
        std::uint64_t runs = 0;
    };

    static void set_first(std::vector<std::int64_t>& v, std::uint64_t n, std::int64_t t) {
        if (v.size() <= n) v.resize(std::max<std::size_t>(n + 1, v.size() * 2), never);
        if (v[n] == never) v[n] = t;
    }
    static std::int64_t at(const std::vector<std::int64_t>& v, std::uint64_t n) { return n < v.size() ? v[n] : never; }

    std::map<std::string, stream_state> streams_;
    std::map<std::string, sub_state> subs_;
    std::vector<fault_record> faults_;
};

inline history::report history::check() const {
    report r;
    r.faults = faults_;
    std::vector<std::vector<std::size_t>> candidates;  // per duplicate of r.duplicates: its explaining faults
    std::vector<std::size_t> order(faults_.size());  // faults by start time, for attribution
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](auto a, auto b) { return faults_[a].start < faults_[b].start; });

    for (const auto& [name, s] : subs_) {
        subscription_report sr;
        sr.name = name;
        sr.handler_runs = s.runs;
        for (const auto& stream : s.streams) {
            const auto& st = streams_.at(stream);
            const auto hit = s.handled.find(stream);
            const handled_state* h = hit == s.handled.end() ? nullptr : &hit->second;
            const std::size_t end = std::max({st.tried.size(), st.accepted.size(), st.acked.size(),
                                              h ? h->count.size() : std::size_t(0)});
            for (std::uint64_t n = 0; n < end; ++n) {
                const bool acc = at(st.accepted, n) != never, ack = at(st.acked, n) != never;
                const bool got = h && n < h->count.size() && h->count[n] > 0;
                sr.accepted += acc;
                sr.acked += ack;
                sr.handled += got;
                if (got && !ack && !st.acked.empty()) ++sr.unconfirmed;
                if (got && at(st.tried, n) == never && !acc) ++sr.stray;
                if (got || !(ack || (acc && st.finished))) continue;
                if (!ack) {
                    const auto tacc = at(st.accepted, n);
                    bool unstored = false;  // its producer died before the commit could be known
                    for (auto k : st.producer_kills) unstored = unstored || k >= tacc;
                    if (unstored) continue;
                }
                // Never handled, and it had to be. A hard broker kill may have forgotten it: acknowledged in
                // the window before the kill, accepted before the kill ended.
                bool forgot = false;
                const auto ta = at(st.acked, n), tacc = at(st.accepted, n);
                for (const auto& f : faults_)
                    if (f.forget_window > 0 && ta != never && ta >= f.start - f.forget_window &&
                        (tacc == never || tacc <= f.end))
                        forgot = true;
                if (forgot) {
                    ++sr.broker_forgot;
                    continue;
                }
                ++sr.lost;
                if (sr.lost_ids.size() < 50) sr.lost_ids.push_back({stream, n, tacc, ta});
            }
        }
        for (auto d : s.dups) {
            const auto& st = streams_.at(d.stream);
            auto since = at(st.tried, d.n);
            if (since == never) since = at(st.accepted, d.n);
            if (since == never) since = s.handled.at(d.stream).first[d.n];
            std::vector<std::size_t> explaining;  // most recent first: the greedy pass tries them in this order
            for (auto it = order.rbegin(); it != order.rend(); ++it) {
                const auto& f = faults_[*it];
                if (f.end >= since && f.may_explain(d.stream, d.n, d.time))
                    explaining.push_back(*it);
            }
            d.unexpected = explaining.empty();
            ++sr.duplicates;
            sr.unexpected += d.unexpected;
            candidates.push_back(std::move(explaining));
            r.duplicates.push_back(d);
        }
        r.accepted += sr.accepted;
        r.handled += sr.handled;
        r.lost += sr.lost;
        r.broker_forgot += sr.broker_forgot;
        r.stray += sr.stray;
        r.duplicates_total += sr.duplicates;
        r.unexpected += sr.unexpected;
        r.subscriptions.push_back(std::move(sr));
    }
    // A hard broker kill may deliver again what was handled in its forget window: part of its bound.
    for (auto& f : r.faults) {
        if (f.forget_window > 0)
            for (const auto& [name, s] : subs_)
                for (const auto& [stream, h] : s.handled)
                    for (auto t : h.first)
                        if (t != never && t >= f.start - f.forget_window && t <= f.end) ++f.window_bound;
        f.bound += f.window_bound;
    }
    charge(r, candidates, order);
    for (auto& f : r.faults) {
        r.bound_total += f.bound;
        r.max_per_fault = std::max(r.max_per_fault, f.duplicates);
        r.faults_over_bound += f.duplicates > f.bound;
        ++r.faults_by_kind[f.kind];
        r.duplicates_by_kind[f.kind] += f.duplicates;
    }
    return r;
}

inline void history::charge(report& r, const std::vector<std::vector<std::size_t>>& candidates,
                            const std::vector<std::size_t>& order) {
    const std::size_t nf = r.faults.size();
    std::vector<std::vector<std::size_t>> charged(nf);  // per fault: the duplicates charged to it
    std::vector<int> owner(r.duplicates.size(), -1);
    // Greedy first: the most recent explaining fault with bound left. It places nearly every duplicate.
    for (std::size_t d = 0; d < r.duplicates.size(); ++d)
        for (auto f : candidates[d])
            if (charged[f].size() < r.faults[f].bound) {
                charged[f].push_back(d);
                owner[d] = int(f);
                break;
            }
    // Then an augmenting path for each one left: move a charged duplicate to another of its faults to make room.
    std::vector<char> seen(nf);
    std::function<bool(std::size_t)> place = [&](std::size_t d) -> bool {
        for (auto f : candidates[d]) {
            if (seen[f]) continue;
            seen[f] = 1;
            if (charged[f].size() < r.faults[f].bound) {
                charged[f].push_back(d);
                owner[d] = int(f);
                return true;
            }
            for (auto& other : charged[f])
                if (place(other)) {  // `other` moved to another fault: d takes its slot
                    other = d;
                    owner[d] = int(f);
                    return true;
                }
        }
        return false;
    };
    for (std::size_t d = 0; d < r.duplicates.size(); ++d) {
        if (owner[d] >= 0 || candidates[d].empty()) continue;
        std::fill(seen.begin(), seen.end(), 0);
        place(d);
    }
    // What fits nowhere goes to the most recent fault before it that could explain it (over its bound, or
    // unexpected if none).
    for (std::size_t d = 0; d < r.duplicates.size(); ++d) {
        auto& dup = r.duplicates[d];
        if (owner[d] < 0)
            for (auto it = order.rbegin(); it != order.rend(); ++it)
                if (r.faults[*it].may_explain(dup.stream, dup.n, dup.time)) {
                    owner[d] = int(*it);
                    break;
                }
        dup.fault = owner[d];
        if (owner[d] >= 0) ++r.faults[std::size_t(owner[d])].duplicates;
    }
}

inline std::string history::report::text() const {
    std::ostringstream o;
    o << "history: " << faults.size() << " faults (";
    bool first = true;
    for (const auto& [k, n] : faults_by_kind) {
        o << (first ? "" : ", ") << k << " " << n;
        first = false;
    }
    o << "), accepted " << accepted << ", handled " << handled << ", LOST " << lost;
    if (broker_forgot) o << ", forgotten by a killed broker " << broker_forgot;
    o << ", stray " << stray << ", duplicates " << duplicates_total << " (unexpected " << unexpected
      << ", max per fault " << max_per_fault << ", faults over their bound " << faults_over_bound << ", bound total "
      << bound_total << ")\n";
    if (!duplicates_by_kind.empty()) {
        o << "  duplicates by fault kind:";
        for (const auto& [k, n] : duplicates_by_kind) o << " " << k << " " << n;
        o << "\n";
    }
    for (const auto& s : subscriptions) {
        o << "  " << s.name << ": accepted " << s.accepted << ", acked " << s.acked << ", handled " << s.handled
          << " (runs " << s.handler_runs << "), LOST " << s.lost;
        if (s.broker_forgot) o << ", forgotten by a killed broker " << s.broker_forgot;
        o << ", duplicates " << s.duplicates << " (unexpected " << s.unexpected << "), unconfirmed " << s.unconfirmed
          << ", stray " << s.stray << "\n";
        // Each lost message with the faults around it (from 5 s before it was accepted on).
        for (std::size_t i = 0; i < s.lost_ids.size() && i < 20; ++i) {
            const auto& l = s.lost_ids[i];
            o << "    lost " << l.stream << "#" << l.n << " (accepted at " << l.accepted << " us, acked at "
              << (l.acked == never ? std::string("never") : std::to_string(l.acked) + " us")
              << "); faults from 5 s before:";
            int near = 0;
            for (std::size_t k = 0; k < faults.size(); ++k)
                if (l.accepted != never && faults[k].end >= l.accepted - 5000000 && near++ < 8)
                    o << " #" << k << " " << faults[k].kind << " at " << faults[k].start << " us";
            o << "\n";
        }
    }
    for (std::size_t i = 0; i < faults.size(); ++i) {
        const auto& f = faults[i];
        if (f.duplicates <= f.bound) continue;
        o << "  fault " << i << " (" << f.kind << ") caused " << f.duplicates << " duplicates, bound " << f.bound
          << "; the first:";
        int listed = 0;
        for (const auto& d : duplicates)
            if (d.fault == int(i) && listed++ < 12)
                o << " " << d.subscription << ":" << d.stream << "#" << d.n << "@+" << (d.time - f.start) / 1000 << "ms";
        o << "\n";
        if (!f.note.empty()) o << "    observed: " << f.note << "\n";
        // Where its copies come from: when their messages were first handled, against this fault and the
        // one before it (a broker that restored an older snapshot re-delivers what was handled just before).
        std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> seqs;  // per subscription:stream
        std::int64_t lo = 0, hi = 0;
        std::uint64_t count = 0;
        for (const auto& d : duplicates) {
            if (d.fault != int(i) || d.first == never) continue;
            const auto rel = d.first - f.start;
            lo = count ? std::min(lo, rel) : rel;
            hi = count ? std::max(hi, rel) : rel;
            ++count;
            const auto key = d.subscription + ":" + d.stream;
            auto it = seqs.find(key);
            if (it == seqs.end()) seqs[key] = {d.n, d.n};
            else it->second = {std::min(it->second.first, d.n), std::max(it->second.second, d.n)};
        }
        if (count) {
            o << "    first handled from " << lo / 1000 << " ms to " << hi / 1000 << " ms after the fault's start";
            if (i > 0) o << " (the fault before it, " << faults[i - 1].kind << ", started " << (faults[i - 1].start - f.start) / 1000
                         << " ms)";
            o << "; messages";
            for (const auto& [key, range] : seqs) o << " " << key << "#" << range.first << "-" << range.second;
            o << "\n";
        }
    }
    int shown = 0;
    for (const auto& d : duplicates)
        if (d.unexpected && shown++ < 20)
            o << "  unexpected duplicate: " << d.subscription << " " << d.stream << "#" << d.n << " at " << d.time
              << " us\n";
    return o.str();
}

}  // namespace xymqtt::test
