#pragma once

#include "status.h"

namespace criusec {

/* Known-answer tests of every primitive through the engine's own wrappers. */
[[nodiscard]] Status self_test();

} /* namespace criusec */
