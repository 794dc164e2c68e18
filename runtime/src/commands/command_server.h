// The serving side of the command protocol of xy-mqtt: the commands a client (or the loopback) serves, their
// invokes and cancels, on the lanes and commits of its host (commands/command_host.h).
//
// Guarantees:
//  - An invoke's outcome (resolve or reject) is committed together with the removal of the invoke from the
//    inbox, and kept in the results table: a repeated invoke (the caller's resend, or the broker's after a
//    crash) is answered from it, never run again. A cancelled call publishes nothing, also when repeated.
//  - An expired invoke is rejected with 408, an undecodable one with 400 (commands/call_core.h).
//  - A cancel that races with the outcome is decided under one lock: either the outcome is published, or
//    the cancel is recorded, never both.
//  - A command's handlers run on the invoke lane's thread (concurrency 1), on the command's own threads
//    (concurrency above 1), or answer later through a responder (deferred); `stop` lets the calls at work
//    finish and be answered, and drops later answers (their invokes run again in the next run).
#pragma once

#include <memory>
#include <mutex>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "commands/call_core.h"
#include "commands/command_host.h"
#include "commands/wire.h"
#include "commands/worker_pool.h"
#include "xymqtt/hooks.h"

namespace xymqtt::detail {

class command_server {
public:
    /// @param host the transport (outliving the server)
    /// @param h the application's hooks, for logging (outliving the server)
    command_server(command_host& host, const hooks& h);
    command_server(const command_server&) = delete;
    command_server& operator=(const command_server&) = delete;

    /// @throw command_already_registered, configuration_error (wire::validate_command)
    void add(const std::string& command, command_handler handler, const command_options& opts);
    void add(const std::string& command, deferred_command_handler handler, const command_options& opts);
    /// Unsubscribes the command; the calls at work finish and are answered first.
    void remove(const std::string& command);
    /// @return the calls whose handlers are at work.
    std::size_t at_work() const;
    /// The client closes: the commands' threads finish their calls and end; deferred answers under way are
    /// committed, later ones dropped.
    void stop();
    /// Waits for the commands' threads to end (also those of unregistered commands).
    void wait_ended();

private:
    /// How a command's calls run: one of the handlers, and the command's threads if it has any.
    struct runner {
        std::shared_ptr<const command_handler> sync;
        std::shared_ptr<const deferred_command_handler> deferred;
        std::shared_ptr<worker_pool> workers;  // sync with concurrency > 1
    };
    struct entry {
        subscription_id invoke_sub = 0, cancel_sub = 0;
        std::shared_ptr<worker_pool> workers;  // concurrency > 1: its handlers' threads
    };
    /// Lets deferred answers in until stop(), which then waits for those under way.
    class answer_gate;

    void add(const std::string& command, runner run, const command_options& opts);
    std::vector<std::shared_ptr<worker_pool>> pools(bool retired) const;
    void serve_invoke(const std::string& command, const runner& run, const message& m, effects& fx);
    /// Runs a command's handler and adds its outcome (or the record of its cancel) to `fx`.
    void run_call(const std::string& command, const command_handler& handler, const invocation& call,
                  const std::shared_ptr<running_call>& ctx, effects& fx);
    /// Adds a call's outcome, `result` or `error` (or the record of its cancel), to `fx`.
    void conclude_call(const std::string& command, const invocation& call, const std::shared_ptr<running_call>& ctx,
                       std::exception_ptr error, const std::string& result, effects& fx);
    /// The publish of an outcome: to where the invoke asks (outcome_topic), with its correlation data.
    stored_publish make_outcome(const std::string& command, const char* kind, wire::outgoing out,
                                const std::string& message_id, const message_properties& invoke);
    /// Adds a resolve or reject to `fx`: the publish, and the stored copy that answers a repeated invoke.
    void publish_outcome(const std::string& command, const char* kind, wire::outgoing out,
                         const std::string& message_id, const message_properties& invoke, effects& fx);
    /// Where the outcome of an invoke goes: its Response Topic followed by `/resolve` or `/reject` if it
    /// names a valid one, else the command's shared topic.
    std::string outcome_topic(const std::string& command, bool rejected, const message_properties& invoke,
                              const std::string& message_id) const;
    void serve_cancel(const std::string& command, const message& m, effects& fx);
    void log(log_level level, const std::string& text) const;

    command_host& host_;
    const hooks& hooks_;
    mutable std::mutex mu_;
    std::map<std::string, entry> commands_;
    std::map<std::string, std::shared_ptr<running_call>> running_;
    std::set<std::string> finalizing_;  // outcomes decided, not yet committed
    std::vector<std::shared_ptr<worker_pool>> retired_;  // of unregistered commands
    std::shared_ptr<answer_gate> answer_gate_;
};

}  // namespace xymqtt::detail
