// Stub: under the kernel emulator __nv_bfloat16 lives in cuemu.h (force-included by the build).
#pragma once
#include "cuemu.h"
