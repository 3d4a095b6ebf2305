#pragma once
// AsioEnv: the real world behind server::Env (DESIGN.md "Real mode"). One io_context
// thread runs the Node, its KvServer and every timer; the steady clock is the node's
// clock; Send hands bytes to the peer transport; the Rng is seeded from the OS, so no
// two starts share request ids.
//
// Every call happens on the io_context's thread, as the core requires.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "core/server/env.h"

namespace boost::asio {
class io_context;
}

namespace keel::net {

class AsioEnv : public server::Env {
 public:
  using SendFn = std::function<void(NodeId to, std::string bytes)>;

  // Requires: io and storage outlive the env.
  AsioEnv(boost::asio::io_context& io, server::Storage& storage, SendFn send, Logger log);
  ~AsioEnv() override;
  AsioEnv(const AsioEnv&) = delete;
  AsioEnv& operator=(const AsioEnv&) = delete;

  Nanos Now() override;
  server::TimerId SetTimer(Nanos after, std::function<void()> fn) override;
  void CancelTimer(server::TimerId id) override;
  void Send(NodeId to, std::string bytes) override;
  Rng& Random() override { return rng_; }
  server::Storage& Disk() override { return storage_; }
  Logger Log() override { return log_; }

  // Cancels every timer: nothing the core scheduled runs after this (shutdown).
  void CancelAllTimers();
  size_t timers() const { return timers_.size(); }

 private:
  struct Timer;

  boost::asio::io_context& io_;
  server::Storage& storage_;
  SendFn send_;
  Logger log_;
  Rng rng_;
  server::TimerId next_timer_id_ = 1;
  std::map<server::TimerId, std::unique_ptr<Timer>> timers_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace keel::net
