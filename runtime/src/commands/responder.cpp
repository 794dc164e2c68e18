#include <atomic>
#include <mutex>

#include "xymqtt/exception.h"
#include "xymqtt/transport.h"

namespace xymqtt {

struct responder::state {
    std::atomic<bool> answered{false};
    answer_fn answer;

    bool give(std::exception_ptr error, std::string result) {
        if (answered.exchange(true)) return false;
        answer(std::move(error), std::move(result));
        return true;
    }
    ~state() {
        // Every copy dropped unanswered: the call still gets an outcome.
        try {
            give(std::make_exception_ptr(command_error(500, "the handler dropped its responder without answering")), {});
        } catch (...) {
            // A destructor must not throw; the invoke stays in the inbox and runs again after a restart.
        }
    }
};

responder::responder(answer_fn answer) : state_(std::make_shared<state>()) { state_->answer = std::move(answer); }

bool responder::resolve(std::string result) const { return state_->give(nullptr, std::move(result)); }

bool responder::reject(int status, const std::string& message, std::string body) const {
    return state_->give(std::make_exception_ptr(command_error(status, message, std::move(body))), {});
}

bool responder::reject(std::exception_ptr error) const {
    if (!error) error = std::make_exception_ptr(command_error(500, "rejected without a reason"));
    return state_->give(std::move(error), {});
}

bool responder::answered() const { return state_->answered.load(); }

}  // namespace xymqtt
