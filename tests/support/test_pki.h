// A throw-away PKI for TLS tests, made with openssl in a temp dir: EC P-256 keys, valid for two days.
//   ca.crt / wrong-ca.crt        a CA, and a second CA that signed nothing the broker shows
//   server.crt                   for "localhost", signed by ca
//   other.crt                    for "otherhost", signed by ca (a host-name mismatch)
//   client.crt, client.key       a client certificate (CN given), and client-enc.key: the same key,
//                                encrypted with key_password
// Keys are readable by all: Mosquitto may run as another user.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "support/temp_dir.h"

namespace xymqtt::test {

class test_pki {
public:
    /// Makes every file at once. Throws std::runtime_error with openssl's output if a step fails.
    explicit test_pki(const std::string& client_cn = "xymqtt-client");
    /// @return the path of file `f` of the PKI.
    std::string path(const std::string& f) const { return dir_ / f; }
    const std::string key_password;  ///< of client-enc.key

    /// A Mosquitto TLS listener on 127.0.0.1:`port` with certificate `cert` ("server" or "other"),
    /// trusting ca.crt; `require_client`: mutual TLS.
    std::string listener(std::uint16_t port, const std::string& cert, bool require_client) const;

private:
    void run(const std::vector<std::string>& argv) const;
    void ca(const std::string& name) const;
    void cert(const std::string& name, const std::string& cn, const std::string& san) const;
    temp_dir dir_{"pki"};
};

}  // namespace xymqtt::test
