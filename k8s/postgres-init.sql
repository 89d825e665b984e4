-- Each service owns its own database.
CREATE DATABASE jack_guest;
CREATE DATABASE jack_conversation;
CREATE DATABASE jack_upload;
