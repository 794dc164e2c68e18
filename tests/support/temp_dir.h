// A fresh directory for one test, removed with everything in it afterwards.
#pragma once

#include <string>

namespace xymqtt::test {

class temp_dir {
 public:
  // mkdtemp("$TMPDIR/xymqtt-<prefix>.XXXXXX") (TMPDIR defaults to /tmp); throws on failure.
  explicit temp_dir(const std::string& prefix = "test");
  // Removes the tree, unless XYMQTT_KEEP_TEMP=1 is set (for post-mortems).
  ~temp_dir();
  temp_dir(temp_dir&& other) noexcept;
  temp_dir& operator=(temp_dir&& other) noexcept;
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  void remove() noexcept;
  std::string path_;
};

// Whole file as a string ("" if it cannot be read).
std::string read_file(const std::string& path);
// Writes (truncates) a file; throws on failure.
void write_file(const std::string& path, const std::string& content);

}  // namespace xymqtt::test
