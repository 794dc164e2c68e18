// libFuzzer harness: store record decoding (decode_record, parse_sequence_id in runtime/src/store/record.cpp).
// Arbitrary bytes (a corrupt store) may only raise storage_error; a record that decodes must survive
// encode -> decode unchanged.
#include <cstddef>
#include <cstdint>
#include <string>

#include "xymqtt/exception.h"
#include "xymqtt/store.h"

using namespace xymqtt;

namespace {

void check(bool ok) {
    if (!ok) __builtin_trap();
}

bool same(const stored_message& a, const stored_message& b) {
    return a.topic == b.topic && a.payload == b.payload && a.props == b.props && a.retain == b.retain &&
           a.lane == b.lane && a.attempts == b.attempts && a.next_attempt_ms == b.next_attempt_ms &&
           a.created_ms == b.created_ms && a.error == b.error && a.kind == b.kind;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    try {
        const stored_message m = decode_record(bytes);
        const std::string again = encode_record(m);
        check(same(decode_record(again), m));
        check(again.size() <= bytes.size());  // the encoder writes minimal varints
    } catch (const storage_error&) {
    }
    if (const auto n = parse_sequence_id(bytes)) check(sequence_id(*n) == bytes);
    return 0;
}
