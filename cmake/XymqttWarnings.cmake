# Warnings as errors for our own targets only (not for generated protobuf code or third-party headers).
function(xymqtt_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror -Wno-error=deprecated-declarations)
endfunction()
