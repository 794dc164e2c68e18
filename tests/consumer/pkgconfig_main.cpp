// Built with `pkg-config --cflags --libs xymqtt-testing` from an installed prefix, without CMake: a
// protobuf message through the loopback and back.
#include <google/protobuf/wrappers.pb.h>
#include <xymqtt/protobuf_codec.h>
#include <xymqtt/testing/loopback.h>

#include <cstdio>
#include <string>

int main() {
    xymqtt::testing::loopback lb;
    std::string got;
    lb.subscribe("pc/check", [&](const xymqtt::message& m) { got = m.payload; });
    google::protobuf::StringValue v;
    v.set_value("through pkg-config");
    lb.publish("pc/check", xymqtt::protobuf::encode(v, xymqtt::wire_format::binary));
    lb.run_until_idle();
    google::protobuf::StringValue back;
    xymqtt::protobuf::decode(got, xymqtt::wire_format::binary, &back);
    std::printf("%s\n", back.value().c_str());
    return back.value() == "through pkg-config" ? 0 : 1;
}
