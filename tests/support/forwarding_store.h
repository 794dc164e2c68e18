// A store that forwards every call to another: tests derive from it to watch or disturb one call (a commit
// that fails, or is recorded, or waits) and leave the rest to a real store.
#pragma once

#include <memory>
#include <utility>

#include "xymqtt/store.h"

namespace xymqtt::test {

class forwarding_store : public store {
public:
    explicit forwarding_store(std::shared_ptr<store> inner) : inner_(std::move(inner)) {}
    void commit(const std::vector<write_op>& batch) override { inner_->commit(batch); }
    std::optional<std::string> get(table t, const std::string& id) const override { return inner_->get(t, id); }
    void for_each(table t, const std::function<bool(const std::string&, const std::string&)>& fn) const override {
        inner_->for_each(t, fn);
    }
    std::optional<std::string> last_id(table t) const override { return inner_->last_id(t); }
    std::size_t count(table t) const override { return inner_->count(t); }
    session_records& session() override { return inner_->session(); }
    xymqtt::durability durability() const override { return inner_->durability(); }

private:
    std::shared_ptr<store> inner_;
};

}  // namespace xymqtt::test
