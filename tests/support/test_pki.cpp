#include "support/test_pki.h"

#include <sys/stat.h>

#include <random>
#include <stdexcept>
#include <vector>

#include "support/child_process.h"

namespace xymqtt::test {

namespace {

std::string random_password() {
    std::random_device rd;
    return "k3y-" + std::to_string(rd()) + std::to_string(rd());
}

}  // namespace

test_pki::test_pki(const std::string& client_cn) : key_password(random_password()) {
    ca("ca");
    ca("wrong-ca");
    cert("server", "localhost", "DNS:localhost");
    cert("other", "otherhost", "DNS:otherhost");
    cert("client", client_cn, "");
    run({"openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", "client.key", "-out", "client-enc.key", "-passout",
         "pass:" + key_password});
    for (const auto* f : {"ca.key", "wrong-ca.key", "server.key", "other.key", "client.key", "client-enc.key"})
        ::chmod(path(f).c_str(), 0644);
}

std::string test_pki::listener(std::uint16_t port, const std::string& cert, bool require_client) const {
    return "listener " + std::to_string(port) + " 127.0.0.1\ncafile " + path("ca.crt") + "\ncertfile " +
           path(cert + ".crt") + "\nkeyfile " + path(cert + ".key") + "\n" +
           (require_client ? "require_certificate true\n" : "");
}

void test_pki::run(const std::vector<std::string>& argv) const { run_checked(argv, dir_.path()); }

void test_pki::ca(const std::string& name) const {
    run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
         name + ".key", "-out", name + ".crt", "-days", "2", "-subj", "/CN=xymqtt test " + name});
}

void test_pki::cert(const std::string& name, const std::string& cn, const std::string& san) const {
    run({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
         name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn});
    write_file(dir_ / (name + ".ext"),
               san.empty() ? "basicConstraints=CA:FALSE\n" : "basicConstraints=CA:FALSE\nsubjectAltName=" + san + "\n");
    run({"openssl", "x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
         name + ".crt", "-days", "2", "-extfile", name + ".ext"});
}

}  // namespace xymqtt::test
