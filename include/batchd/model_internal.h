/* model_internal.h -- moved to src/model_internal.h (a private header). This forwarder only
 * keeps test/test_model_wire.c and test/fuzz/fuzz_model_wire.c building until they include
 * "model_internal.h" with src/ on their include path; then delete it.
 */
#include "../../src/model_internal.h"
