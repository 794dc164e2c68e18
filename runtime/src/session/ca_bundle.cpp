#include "session/ca_bundle.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "xymqtt/exception.h"

namespace xymqtt::detail {

namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw configuration_error("tls ca: cannot read " + path);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The PEM certificate blocks of `text`, each ending in a newline.
std::string certificates_of(const std::string& text) {
    static const std::string begin = "-----BEGIN CERTIFICATE-----", end = "-----END CERTIFICATE-----";
    std::string out;
    for (auto at = text.find(begin); at != std::string::npos; at = text.find(begin, at)) {
        const auto stop = text.find(end, at);
        if (stop == std::string::npos) break;
        out.append(text, at, stop + end.size() - at).push_back('\n');
        at = stop + end.size();
    }
    return out;
}

}  // namespace

ca_bundle::ca_bundle(const std::string& dir, const std::string& ca_file) {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::set<fs::path> files;  // by target, so that a certificate and its hash links count once
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const auto target = fs::canonical(entry.path(), ec);
        if (!ec && fs::is_regular_file(target, ec)) files.insert(target);
    }
    if (ec) throw configuration_error("tls ca_path " + dir + " cannot be read: " + ec.message());
    std::string pem;
    for (const auto& f : files) pem += certificates_of(read_file(f.string()));
    if (pem.empty()) throw configuration_error("tls ca_path " + dir + " holds no PEM certificate");
    if (!ca_file.empty()) pem += certificates_of(read_file(ca_file));

    const char* tmp = std::getenv("TMPDIR");
    std::string name = std::string(tmp && *tmp ? tmp : "/tmp") + "/xymqtt-ca-XXXXXX";
    const int fd = ::mkstemp(name.data());  // 0600
    if (fd < 0) throw configuration_error("tls ca_path: cannot create a temporary file in " + name);
    std::size_t off = 0;
    while (off < pem.size()) {
        const ssize_t w = ::write(fd, pem.data() + off, pem.size() - off);
        if (w <= 0) {
            ::close(fd);
            ::unlink(name.c_str());
            throw configuration_error("tls ca_path: cannot write " + name);
        }
        off += static_cast<std::size_t>(w);
    }
    ::close(fd);
    path_ = std::move(name);
}

ca_bundle::~ca_bundle() { ::unlink(path_.c_str()); }

}  // namespace xymqtt::detail
