// The LMDB store's write-ahead journal (runtime/src/store/journal.h): what recovery returns after resets,
// torn records and stale records from an earlier cycle.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

#include "store/journal.h"
#include "store_test_util.h"

using xymqtt::detail::crc32;
using xymqtt::detail::journal;
using store_test::overwrite;
using store_test::temp_dir;

namespace {

std::vector<std::uint64_t> seqs(const std::vector<journal::record>& rs) {
    std::vector<std::uint64_t> out;
    for (const auto& r : rs) out.push_back(r.seq);
    return out;
}

// The plain bytewise CRC-32 (IEEE, reflected), to check zlib's against.
std::uint32_t bytewise_crc32(std::uint32_t crc, const unsigned char* p, std::size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; ++k) crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
    }
    return ~crc;
}

// The runtime's own slicing-by-8 CRC-32, which wrote the journals and records files before zlib's took
// its place: files it wrote must still read, so zlib's must give the same value for every input.
std::uint32_t slicing_by_8_crc32(std::uint32_t crc, const void* data, std::size_t n) {
    static const auto tables = [] {
        std::array<std::array<std::uint32_t, 256>, 8> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[0][i] = c;
        }
        for (std::uint32_t i = 0; i < 256; ++i)
            for (std::size_t s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
        return t;
    }();
    const auto* p = static_cast<const unsigned char*>(data);
    crc = ~crc;
    for (; n >= 8; p += 8, n -= 8) {
        const std::uint32_t lo = (std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
                                  std::uint32_t(p[3]) << 24) ^ crc;
        const std::uint32_t hi = std::uint32_t(p[4]) | std::uint32_t(p[5]) << 8 | std::uint32_t(p[6]) << 16 |
                                 std::uint32_t(p[7]) << 24;
        crc = tables[7][lo & 0xFF] ^ tables[6][(lo >> 8) & 0xFF] ^ tables[5][(lo >> 16) & 0xFF] ^
              tables[4][lo >> 24] ^ tables[3][hi & 0xFF] ^ tables[2][(hi >> 8) & 0xFF] ^
              tables[1][(hi >> 16) & 0xFF] ^ tables[0][hi >> 24];
    }
    for (; n > 0; ++p, --n) crc = tables[0][(crc ^ *p) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

}  // namespace

TEST_CASE("crc32: zlib's gives the values of the runtime's former CRC-32, so existing files still read",
          "[store][journal][crc]") {
    CHECK(crc32(0, "123456789", 9) == 0xCBF43926u);
    CHECK(slicing_by_8_crc32(0, "123456789", 9) == 0xCBF43926u);
    CHECK(crc32(0x12345678u, nullptr, 0) == 0x12345678u);  // an empty piece leaves the CRC as it is
    std::mt19937 rng(20240607);
    std::uniform_int_distribution<int> byte(0, 255);
    auto random_bytes = [&](std::size_t n) {
        std::vector<unsigned char> v(n);
        for (auto& b : v) b = static_cast<unsigned char>(byte(rng));
        return v;
    };
    for (std::size_t n = 0; n <= 100; ++n) {
        INFO("length " << n);
        const auto v = random_bytes(n);
        CHECK(crc32(0, v.data(), n) == slicing_by_8_crc32(0, v.data(), n));
        const std::uint32_t seed = static_cast<std::uint32_t>(rng());  // continued from another piece
        CHECK(crc32(seed, v.data(), n) == slicing_by_8_crc32(seed, v.data(), n));
    }
    const auto big = random_bytes(std::size_t(64) << 10);
    CHECK(crc32(0, big.data(), big.size()) == slicing_by_8_crc32(0, big.data(), big.size()));
    CHECK(crc32(crc32(0, big.data(), 12), big.data() + 12, big.size() - 12) ==
          slicing_by_8_crc32(0, big.data(), big.size()));
}

TEST_CASE("crc32: zlib's values, at any length and alignment, and continued over pieces", "[store][journal]") {
    CHECK(crc32(0, "123456789", 9) == 0xCBF43926u);  // the standard check value
    CHECK(crc32(0, "", 0) == 0u);
    std::vector<unsigned char> data(4096 + 16);
    std::uint32_t x = 12345;
    for (auto& b : data) b = static_cast<unsigned char>((x = x * 1103515245u + 12345u) >> 16);
    for (std::size_t offset = 0; offset < 8; ++offset)
        for (std::size_t n : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 100, 1000, 4096}) {
            INFO("offset " << offset << ", length " << n);
            const unsigned char* p = data.data() + offset;
            const std::uint32_t whole = crc32(0, p, n);
            CHECK(whole == bytewise_crc32(0, p, n));
            const std::size_t cut = n / 3;
            CHECK(crc32(crc32(0, p, cut), p + cut, n - cut) == whole);
        }
}

TEST_CASE("journal: a new file is written in full, private, and empty", "[store][journal]") {
    temp_dir tmp;
    const std::string path = tmp.path() + "/journal";
    journal j(path, 65536);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(st.st_size == 65536);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(st.st_blocks * 512 >= 65536);  // allocated, not sparse
    CHECK(j.recover(0).empty());
    CHECK(j.used() == 0);
}

TEST_CASE("journal: recovery returns the records after a sequence number, in order", "[store][journal]") {
    temp_dir tmp;
    const std::string path = tmp.path() + "/journal";
    {
        journal j(path, 4096);
        j.append(1, "one");
        j.append(2, std::string(100, 'b'));
        j.append(3, "");
        CHECK(j.used() == 3 * journal::header_bytes + 103);
    }
    journal j(path, 4096);
    const auto all = j.recover(0);
    CHECK(seqs(all) == std::vector<std::uint64_t>{1, 2, 3});
    CHECK(all[0].body == "one");
    CHECK(all[1].body == std::string(100, 'b'));
    CHECK(all[2].body.empty());
    CHECK(seqs(j.recover(2)) == std::vector<std::uint64_t>{3});
    CHECK(j.recover(3).empty());
    // A checkpoint at a sequence the journal does not continue: nothing of it applies.
    CHECK(j.recover(7).empty());
}

TEST_CASE("journal: after a reset, the older cycle's records are never replayed", "[store][journal]") {
    temp_dir tmp;
    journal j(tmp.path() + "/journal", 4096);
    for (std::uint64_t s = 1; s <= 5; ++s) j.append(s, "first cycle " + std::to_string(s));
    j.reset();  // records 1..5 are in LMDB now
    j.append(6, "x");
    CHECK(seqs(j.recover(5)) == std::vector<std::uint64_t>{6});
    j.reset();
    // Nothing written since the last checkpoint (6): the stale record at offset 0 is not replayed.
    CHECK(j.recover(6).empty());
}

TEST_CASE("journal: a torn or damaged last record ends the journal", "[store][journal]") {
    temp_dir tmp;
    const std::string path = tmp.path() + "/journal";
    const std::string body(50, 'v');
    {
        journal j(path, 4096);
        for (std::uint64_t s = 1; s <= 3; ++s) j.append(s, body);
    }
    const off_t third = 2 * static_cast<off_t>(journal::header_bytes + body.size());
    SECTION("a byte of the body") { overwrite(path, third + journal::header_bytes + 10, "X"); }
    SECTION("the length") { overwrite(path, third + 4, std::string("\xff\xff\x00\x00", 4)); }
    SECTION("the tail never written") { overwrite(path, third + journal::header_bytes, std::string(50, '\0')); }
    journal j(path, 4096);
    CHECK(seqs(j.recover(0)) == std::vector<std::uint64_t>{1, 2});
}

TEST_CASE("journal: a record damaged in the middle costs that record, not the acknowledged ones after it",
          "[store][journal]") {
    temp_dir tmp;
    const std::string path = tmp.path() + "/journal";
    const std::string body(50, 'v');
    {
        journal j(path, 4096);
        for (std::uint64_t s = 1; s <= 5; ++s) j.append(s, body + std::to_string(s));
    }
    const off_t size = static_cast<off_t>(journal::header_bytes + body.size() + 1);
    SECTION("a byte of the body") { overwrite(path, 2 * size + journal::header_bytes + 10, "X"); }
    SECTION("the length") { overwrite(path, 2 * size + 4, std::string("\xff\xff\x00\x00", 4)); }
    SECTION("a whole record zeroed") { overwrite(path, 2 * size, std::string(std::size_t(size), '\0')); }
    journal j(path, 4096);
    const auto got = j.recover(0);
    REQUIRE(seqs(got) == std::vector<std::uint64_t>{1, 2, 4, 5});
    CHECK(got[2].body == body + "4");
    CHECK(seqs(j.recover(3)) == std::vector<std::uint64_t>{4, 5});
}

TEST_CASE("journal: past a damaged record, older cycles' records are not taken", "[store][journal]") {
    temp_dir tmp;
    const std::string path = tmp.path() + "/journal";
    journal j(path, 4096);
    for (std::uint64_t s = 1; s <= 6; ++s) j.append(s, "first cycle " + std::to_string(s));
    j.reset();  // 1..6 are in LMDB now
    j.append(7, "second cycle 7");
    j.append(8, "second cycle 8");
    overwrite(path, journal::header_bytes + 2, "#");  // record 7 damaged: behind 8 lie the first cycle's 3..6
    CHECK(seqs(j.recover(6)) == std::vector<std::uint64_t>{8});
}

TEST_CASE("journal: mapped appends are in the file at once, and read back like synced ones", "[store][journal]") {
    temp_dir tmp;
    const std::string path = tmp.path() + "/journal";
    journal mapped(path, 4096, journal::mode::mapped);
    mapped.append(1, "one");
    mapped.append(2, std::string(200, 'm'));
    // Another reader of the file (as the next process would be) sees both while the writer still runs.
    const auto seen = journal(path, 4096).recover(0);
    REQUIRE(seqs(seen) == std::vector<std::uint64_t>{1, 2});
    CHECK(seen[1].body == std::string(200, 'm'));
    // After a reset the next cycle overwrites from offset 0, and only records after the checkpoint count.
    mapped.reset();
    mapped.append(3, "three");
    CHECK(seqs(journal(path, 4096).recover(2)) == std::vector<std::uint64_t>{3});
    CHECK(journal(path, 4096).recover(3).empty());
}

TEST_CASE("journal: what fits, and a file larger than asked for", "[store][journal]") {
    temp_dir tmp;
    const std::string path = tmp.path() + "/journal";
    journal j(path, 4096);
    j.append(1, "kept");
    REQUIRE(j.fits(100));
    CHECK_FALSE(j.fits(4096));
    CHECK_FALSE(j.could_fit(4096 - journal::header_bytes + 1));
    CHECK(j.could_fit(4096 - journal::header_bytes));
    // A larger file than asked for (written with a larger capacity) is read in full.
    journal bigger(path, 1024);
    CHECK(seqs(bigger.recover(0)) == std::vector<std::uint64_t>{1});
}
