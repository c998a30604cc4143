// Stub: under the kernel emulator __half lives in cuemu.h (force-included by the build).
#pragma once
#include "cuemu.h"
