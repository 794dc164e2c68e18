// The calling side of the command protocol of xy-mqtt: invokes and cancels out, resolves and rejects in, on
// the lanes and commits of its host (commands/command_host.h).
//
// Guarantees:
//  - A call is stored with its invoke, atomically, before call() returns: a result can only match a stored
//    call, and a call the process survives is answered (or re-sent, below) after a restart.
//  - A result is handed over once: to the completion of a call_async, or else to every result handler of the
//    command, and the call's record is removed with it (a handler that throws has the result retried; a
//    call with no handler keeps its result until one is subscribed). A result that no stored call awaits
//    is ignored.
//  - call() refuses a command whose results could never reach a handler of this client (no subscription to
//    both result topics); nothing is accepted that could never be answered (result topics the broker
//    refused fail the awaited calls and refuse new ones until a SUBSCRIBE is granted).
//  - A call_async with a timeout fails with timeout_error when it runs out, forgets the call (a late result
//    is ignored) and sends its cancel.
//  - With resend_after, an unanswered call's invoke is sent again after that delay, then after twice
//    that, and so on (at most hourly), until answered, timed out or cancelled.
#pragma once

#include <atomic>
#include <chrono>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "commands/command_host.h"
#include "xymqtt/hooks.h"
#include "xymqtt/transport.h"

namespace xymqtt::detail {

class command_caller {
public:
    struct options {
        int mqtt_version = 5;
        std::string client_id;  ///< For messages: whose result topics a broker refused.
        result_routing routing = result_routing::shared;  ///< Where results go unless a call says.
        /// `<prefix>/<client id>`, the root of this client's own result topics; empty if it cannot have any,
        /// and then `no_results_root` says why.
        std::string results_root;
        std::string no_results_root;
        std::optional<std::chrono::milliseconds> resend_after;  ///< client_options::resend_unanswered_after
        std::string closed;  ///< What a cancel after close() says: "the client is closed".
    };

    /// @param host the transport (outliving the caller)
    /// @param h the application's hooks, for logging (outliving the caller)
    command_caller(command_host& host, const hooks& h, options opts);
    command_caller(const command_caller&) = delete;
    command_caller& operator=(const command_caller&) = delete;

    /// @throw invalid_topic, error (no handler), configuration_error (per-client routing unavailable)
    subscription_id subscribe_results(const std::string& command, result_handler handler,
                                      std::optional<result_routing> routing);
    /// @return false if `id` is no result handler's.
    bool remove_result_handler(subscription_id id);
    /// @throw call_with_no_subscription, configuration_error, broker_error (result topics refused), what
    ///        the commit throws
    call_handle call(const std::string& command, std::string body, const call_options& opts);
    /// @throw configuration_error, broker_error (result topics refused), what the commit throws
    call_handle call_async(const std::string& command, std::string body, const call_options& opts,
                           std::optional<std::chrono::milliseconds> timeout, call_completion done);

    /// @return the result in `rec`, an arrival bound for one of the caller's result lanes (and no other
    ///         lane), if a call_async awaits it: the host may answer it at once (answer), removing the call's
    ///         record instead of storing the arrival, without the lane.
    std::optional<command_result> awaited_result(const stored_message& rec);
    /// Hands `r` (from awaited_result, its call's removal committed) to its completion.
    void answer(const command_result& r);
    /// An invoke the broker refused for good: an awaited call fails with broker_error (its removal is added
    /// to `ops`); for any other call, the reject its result handlers get instead (the host stores it as an
    /// arrival, in `ops` too).
    std::optional<stored_message> refused(const stored_message& invoke, int reason_code, const std::string& why,
                                          std::vector<write_op>& ops);
    /// @return the filter of this client's own result topics, `<root>/#` ("" if it has none).
    std::string results_filter() const;
    /// The broker's answer to the SUBSCRIBE of results_filter(): a refusal fails the calls awaited and
    /// refuses new ones until a later SUBSCRIBE is granted.
    void results_subscription(int reason_code);
    /// Schedules the resends of calls a previous run left unanswered (their ids).
    void resume(const std::vector<std::string>& ids);
    /// No more resends.
    void stop();
    /// Fails every awaited call with `why`; a call handle can no longer cancel.
    void close(std::exception_ptr why);

private:
    result_routing routing_of(std::optional<result_routing> routing) const;
    void ensure_results_lane(const std::string& command, result_routing routing);
    bool has_result_subscription(const std::string& command, result_routing routing) const;
    /// @return the command and whether it is a reject, for a topic of this client's own result topics.
    std::optional<std::pair<std::string, bool>> routed_result_topic(const std::string& topic) const;
    void handle_routed_result(const message& m, effects& fx);
    void handle_result(const std::string& command, bool rejected, const message& m, effects& fx);
    std::string start_call(const std::string& command, std::string body, const call_options& opts,
                           result_routing routing, call_completion awaiting);
    call_handle make_handle(const std::string& command, const std::string& id, wire_format format);
    void cancel_call(const std::string& command, const std::string& message_id, wire_format format);
    void schedule_resend(const std::string& id, std::chrono::milliseconds after);
    call_completion take_awaiting(const std::string& id);
    bool awaits(const std::string& id) const;
    void log(log_level level, const std::string& text) const;

    command_host& host_;
    const hooks& hooks_;
    const options opts_;
    std::atomic<bool> stopping_{false};
    std::shared_ptr<std::atomic<bool>> alive_ = std::make_shared<std::atomic<bool>>(true);

    mutable std::mutex mu_;                           // awaiting_, refused_
    std::map<std::string, call_completion> awaiting_;  // call_async completions by message id
    std::string refused_;  // why the broker refused the result topics, "" if not

    mutable std::mutex results_mu_;  // result_handlers_, result_lanes_
    std::map<std::string, std::map<subscription_id, result_handler>> result_handlers_;
    std::map<std::string, std::pair<subscription_id, subscription_id>> result_lanes_;  // shared: resolve, reject

    std::mutex root_mu_;  // held while the lane of the per-client result topics is made
    std::atomic<subscription_id> root_sub_{0};
};

}  // namespace xymqtt::detail
