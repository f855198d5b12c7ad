// A file of given text at a temporary path, removed with the object: the
// duration-file tests' input.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace cd::testing_support {

class TempFile {
 public:
  explicit TempFile(const std::string& text)
      : path_(testing::TempDir() + "durations-" + std::to_string(::getpid()) + "-" +
              std::to_string(counter_++)) {
    std::ofstream(path_, std::ios::binary) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::string path_;
};

}  // namespace cd::testing_support
