#include "net/asio_env.h"

#include <chrono>
#include <random>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

namespace keel::net {
namespace {

uint64_t SeedFromOs() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

}  // namespace

struct AsioEnv::Timer {
  explicit Timer(boost::asio::io_context& io) : timer(io) {}
  boost::asio::steady_timer timer;
  std::function<void()> fn;
};

AsioEnv::AsioEnv(boost::asio::io_context& io, server::Storage& storage, SendFn send,
                 Logger log)
    : io_(io), storage_(storage), send_(std::move(send)), log_(log), rng_(SeedFromOs()) {}

AsioEnv::~AsioEnv() { CancelAllTimers(); }

Nanos AsioEnv::Now() {
  return std::chrono::duration_cast<Nanos>(
      std::chrono::steady_clock::now().time_since_epoch());
}

server::TimerId AsioEnv::SetTimer(Nanos after, std::function<void()> fn) {
  const server::TimerId id = next_timer_id_++;
  auto timer = std::make_unique<Timer>(io_);
  timer->fn = std::move(fn);
  // The handler looks its timer up by id: a canceled (erased) timer's handler finds
  // nothing and does nothing, whatever error code it carries.
  auto fire = [this, id, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code&) {
    if (alive.expired()) return;  // the env is gone; the io_context still ran this
    auto it = timers_.find(id);
    if (it == timers_.end()) return;
    std::function<void()> fn = std::move(it->second->fn);
    timers_.erase(it);
    fn();
  };
  if (after <= Nanos(0)) {
    // "The next turn" (the core's request flush, deferred replies): a post runs after
    // what is already queued, as a due timer would, without a trip through the timer
    // queue and the reactor.
    boost::asio::post(io_, [fire] { fire({}); });
  } else {
    timer->timer.expires_after(after);
    timer->timer.async_wait(std::move(fire));
  }
  timers_.emplace(id, std::move(timer));
  return id;
}

void AsioEnv::CancelTimer(server::TimerId id) { timers_.erase(id); }

void AsioEnv::CancelAllTimers() { timers_.clear(); }

void AsioEnv::Send(NodeId to, std::string bytes) { send_(to, std::move(bytes)); }

}  // namespace keel::net
