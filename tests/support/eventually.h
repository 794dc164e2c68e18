// Awaiting a condition without fixed sleeps.
#pragma once

#include <chrono>
#include <thread>

namespace xymqtt::test {

// Polls `cond` until it returns true or `timeout` passes; returns the last
// result. Waits 1 ms between the first polls, then backs off to 10 ms, so a
// quick condition is seen quickly and a slow one costs little CPU.
//   REQUIRE(eventually([&] { return received.size() == 10; }, 5s));
template <class F>
bool eventually(F cond, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    if (cond()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return static_cast<bool>(cond());
    std::this_thread::sleep_for(pause);
    if (pause < std::chrono::milliseconds(10)) pause += std::chrono::milliseconds(1);
  }
}

}  // namespace xymqtt::test
