# espcam node application. The version travels in the state document as "app".
VERSION = "0.1.0"
