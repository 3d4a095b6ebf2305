#pragma once
// Swarm testing (Groce et al., "Swarm Testing", ISSTA 2012): each seed draws a cluster
// size (1-7), timings, network and disk quality, a workload, and a random subset of the
// fault kinds, then a random schedule of faults from that subset. Runs that leave a
// fault kind out explore deeper in the others.

#include <cstdint>

#include "sim/scenario.h"

namespace keel::sim {

Scenario SwarmScenario(uint64_t seed);

}  // namespace keel::sim
