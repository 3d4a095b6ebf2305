#pragma once
// The tests' backend is the core's own in-memory one.
#include "core/kv/memory_backend.h"
